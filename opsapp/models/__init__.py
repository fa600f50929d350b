"""The console's own tables. Model names are part of the interface (DESIGN.md)."""

from opsapp.models.audit import AuditAction, AuditEvent, AuditOutcome
from opsapp.models.operation import ACTIVE_STATES, Operation, OperationKind, OperationState
from opsapp.models.revision import Revision
from opsapp.models.rollback import RollbackRequest, RollbackStatus
from opsapp.models.snapshot import Snapshot, SnapshotStatus
from opsapp.models.target import Target, TargetState

__all__ = [
    "ACTIVE_STATES",
    "Operation",
    "OperationKind",
    "OperationState",
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
