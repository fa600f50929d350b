"""The console's own tables. Model names are part of the interface (DESIGN.md)."""

from opsapp.models.audit import AuditAction, AuditEvent, AuditOutcome
from opsapp.models.cron import CronRun
from opsapp.models.revision import Revision
from opsapp.models.rollback import RollbackRequest, RollbackStatus
from opsapp.models.snapshot import Snapshot, SnapshotStatus
from opsapp.models.target import Target, TargetState

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditOutcome",
    "CronRun",
    "Revision",
    "RollbackRequest",
    "RollbackStatus",
    "Snapshot",
    "SnapshotStatus",
    "Target",
    "TargetState",
]
