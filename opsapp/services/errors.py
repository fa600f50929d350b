"""One exception hierarchy for the services, with structured attributes.

Edges (admin views, management commands) catch `OpsError` and show
`str(exc)`; nothing below this layer prints or exits. Alembic's
`CommandError` / `RevisionError` are translated in `opsapp.services.alembic_api`
and re-raised `from` the original.
"""

from __future__ import annotations

from typing import Any


class OpsError(Exception):
    """Base of every error the services raise on purpose."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        self.target: str | None = attrs.pop("target", None)
        self.revision: str | None = attrs.pop("revision", None)
        self.heads: list[str] | None = attrs.pop("heads", None)
        self.reason: str | None = attrs.pop("reason", None)
        for key, value in attrs.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class TargetNotConfigured(OpsError):
    """No target of that name in OPS_TARGETS."""


class TargetMisconfigured(OpsError):
    """The target's settings fail validation (see opsapp.checks)."""


class TargetUnreachable(OpsError):
    """The target database could not be reached; the message has the password masked."""


class ScriptDirectoryError(OpsError):
    """The script directory cannot be read (missing, or a file fails to import)."""


class RevisionResolutionError(OpsError):
    """A revision identifier cannot be resolved: unknown, ambiguous, not below the heads."""


class SnapshotError(OpsError):
    """Taking, verifying, restoring or pruning a snapshot failed."""


class AuditError(OpsError):
    """The audit log could not be written or fails verification."""


class GateRefused(OpsError):
    """A downgrade gate refused; `.gate` names which one."""

    def __init__(self, message: str, *, gate: str, **attrs: Any) -> None:
        super().__init__(message, **attrs)
        self.gate = gate


class RollbackFailed(OpsError):
    """The downgrade ran and failed; the transaction was rolled back."""
