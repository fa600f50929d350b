"""Snapshots of targets: take, verify, restore, prune; PostgreSQL and SQLite."""
