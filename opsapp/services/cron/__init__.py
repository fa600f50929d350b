"""Cron runs: what ran when, and which job is overdue, failing or never ran."""
