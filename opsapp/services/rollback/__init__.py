"""The guarded downgrade: requests, plan, gate, codes, execution."""
