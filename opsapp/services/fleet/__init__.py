"""The fleet: many targets at once (parallel sync, the state matrix)."""
