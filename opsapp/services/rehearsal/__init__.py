"""Rehearsing a downgrade on a scratch copy of its snapshot (issue 14)."""
