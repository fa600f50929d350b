"""The audit log: the hash chain, appending, verifying, exporting."""
