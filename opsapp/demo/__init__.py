"""Demo-only code: the demo target's seed data, the transfer example, generated histories."""
