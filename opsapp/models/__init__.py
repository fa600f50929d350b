"""The console's own tables. Model names are part of the interface (docs/design.md)."""

from opsapp.models.audit import AuditAction, AuditEvent, AuditOutcome
from opsapp.models.revision import Revision
from opsapp.models.rollback import RollbackRequest, RollbackStatus
from opsapp.models.snapshot import Snapshot, SnapshotStatus
from opsapp.models.target import Target, TargetState

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditOutcome",
    "Revision",
    "RollbackRequest",
    "RollbackStatus",
    "Snapshot",
    "SnapshotStatus",
    "Target",
    "TargetState",
]
