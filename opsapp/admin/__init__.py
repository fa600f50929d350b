"""Admin registrations, one module per model (imported here so Django finds them)."""
