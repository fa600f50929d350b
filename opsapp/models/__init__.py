"""The console's own tables. Model names are part of the interface (docs/design.md)."""

from opsapp.models.audit import AuditAction, AuditEvent, AuditOutcome
from opsapp.models.cron import CronRun
from opsapp.models.operation import ACTIVE_STATES, Operation, OperationKind, OperationState
from opsapp.models.rehearsal import Rehearsal, RehearsalStatus
from opsapp.models.revision import Revision, ScriptCatalog
from opsapp.models.rollback import RollbackRequest, RollbackStatus
from opsapp.models.snapshot import Snapshot, SnapshotStatus
from opsapp.models.target import Target, TargetState
from opsapp.models.two_factor import AuthenticatorDevice, BackupCode, BackupCodeDevice

__all__ = [
    "AuthenticatorDevice",
    "BackupCode",
    "BackupCodeDevice",
    "ACTIVE_STATES",
    "Operation",
    "OperationKind",
    "OperationState",
    "AuditAction",
    "AuditEvent",
    "AuditOutcome",
    "Rehearsal",
    "RehearsalStatus",
    "CronRun",
    "Revision",
    "RollbackRequest",
    "RollbackStatus",
    "ScriptCatalog",
    "Snapshot",
    "SnapshotStatus",
    "Target",
    "TargetState",
]
