"""Admin registrations, one module per model (imported here so Django finds them)."""

from opsapp.admin import audit, operation, revision, rollback, snapshot, target, two_factor  # noqa: F401
