"""Putting operations on the queue, cancelling them, and reading them back.

An Operation row and its queue entry are created in one transaction on the
console's database, so a worker never sees a job without its row, and a
failed enqueue leaves no row behind. Only the row's id goes on the queue.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from opsapp.models import (
    ACTIVE_STATES,
    AuditAction,
    AuditOutcome,
    Operation,
    OperationKind,
    OperationState,
    RollbackRequest,
)
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.catalog.sync import ensure_target_row
from opsapp.services.errors import OpsError
from opsapp.targets import get_target


class OperationNotFound(OpsError):
    """No operation with that id."""


class CannotCancel(OpsError):
    """The operation is finished, or is of a kind that cannot be cancelled while it runs."""


def create_operation(
    kind: str,
    target_name: str,
    *,
    actor: Actor,
    request: RollbackRequest | None = None,
    retry_of: Operation | None = None,
) -> Operation:
    """Create an Operation and enqueue `run_operation(id)`; both in one transaction. Must run inside one."""
    from opsapp.services.operations.tasks import run_operation

    get_target(target_name)  # raises TargetNotConfigured for a bad name: no row, no job
    target = ensure_target_row(target_name)
    op = Operation.objects.create(
        kind=kind,
        target=target,
        request=request,
        snapshot=request.snapshot if request is not None and kind == OperationKind.DOWNGRADE else None,
        retry_of=retry_of,
        attempt=(retry_of.attempt + 1) if retry_of else 1,
        requested_by_id=actor.user_id,
        requested_by_username=actor.username[:150],
        client_ip=actor.client_ip,
        progress_unit="steps"
        if kind == OperationKind.DOWNGRADE
        else ("bytes" if kind == OperationKind.SNAPSHOT else ""),
    )
    result = run_operation.enqueue(op.pk)
    op.task_id = str(result.id)[:64]
    op.save(update_fields=["task_id"])
    return op


def enqueue(kind: str, target_name: str, *, actor: Actor, attach_to: RollbackRequest | None = None) -> Operation:
    """Queue a sync or a snapshot of `target_name`; return the queued Operation.

    A snapshot with `attach_to` is attached to that rollback request once verified.
    """
    if kind not in (OperationKind.SYNC, OperationKind.SNAPSHOT):
        raise OpsError(f"{kind!r} cannot be queued this way.")
    with transaction.atomic():
        return create_operation(kind, target_name, actor=actor, request=attach_to)


def get_operation(operation_id: int) -> Operation:
    op = Operation.objects.select_related("target", "request", "snapshot").filter(pk=operation_id).first()
    if op is None:
        raise OperationNotFound(f"Operation #{operation_id} does not exist.")
    return op


def active_operations() -> QuerySet[Operation]:
    """Running then queued operations, for the dashboard."""
    return (
        Operation.objects.select_related("target")
        .filter(state__in=ACTIVE_STATES)
        .order_by("-state", "queued_at", "id")  # "running" sorts after "queued": running first
    )


def cancel_operation(operation_id: int, *, actor: Actor) -> Operation:
    """Cancel a queued operation at once, or ask a running snapshot or downgrade to stop.

    A queued one turns `cancelled` here (its worker will skip it). A running
    snapshot is stopped by its worker within a heartbeat (the dump killed,
    its file removed); a running downgrade is aborted as a whole (its
    transaction rolls back). Audited either way. Raises CannotCancel for a
    finished operation or a running sync.
    """
    op = get_operation(operation_id)
    now = timezone.now()
    with transaction.atomic():
        if Operation.objects.filter(pk=op.pk, state=OperationState.QUEUED).update(
            state=OperationState.CANCELLED,
            finished_at=now,
            cancel_requested_at=now,
            cancel_requested_by=actor.username[:150],
            error=f"Cancelled by {actor.username} before it started.",
        ):
            _audit_cancel(op, actor, f"Operation #{op.pk} ({op.kind} of {op.target.name}) cancelled before it started.")
            op.refresh_from_db()
            return op
        if op.kind == OperationKind.SYNC:
            raise CannotCancel(f"Operation #{op.pk} is a sync that is {op.state}; a running sync cannot be cancelled.")
        if not Operation.objects.filter(
            pk=op.pk, state=OperationState.RUNNING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, cancel_requested_by=actor.username[:150]):
            op.refresh_from_db()
            if op.state == OperationState.RUNNING:
                return op  # already asked
            raise CannotCancel(f"Operation #{op.pk} is {op.state}; only a queued or running one can be cancelled.")
        what = "abort of the whole downgrade" if op.kind == OperationKind.DOWNGRADE else "stop of the running dump"
        _audit_cancel(op, actor, f"Operation #{op.pk} ({op.kind} of {op.target.name}): {what} requested.")
    op.refresh_from_db()
    return op


def _audit_cancel(op: Operation, actor: Actor, message: str) -> None:
    audit_operation(op, AuditAction.OPERATION_CANCELLED, AuditOutcome.INFO, actor, message)


def audit_operation(op: Operation, action: str, outcome: str, actor: Actor, message: str) -> None:
    """One audit event about an operation, with its request's context when it has one."""
    if op.request_id:
        context: dict[str, Any] = request_context(op.request)
    else:
        context = {"target": op.target.name, "snapshot_id": op.snapshot_id}
    append_event(
        action=action,
        outcome=outcome,
        actor=actor,
        message=message,
        detail={"operation": op.pk, "kind": op.kind, "state": op.state},
        **context,
    )


def eta_seconds(op: Operation) -> int | None:
    """Seconds left at the current rate, or None when it cannot be told yet."""
    if op.state != OperationState.RUNNING or not op.started_at or not op.progress_total or not op.progress_done:
        return None
    elapsed = (timezone.now() - op.started_at).total_seconds()
    if elapsed <= 0 or op.progress_done >= op.progress_total:
        return None
    rate = op.progress_done / elapsed
    return int((op.progress_total - op.progress_done) / rate) if rate > 0 else None


def operation_summary(op: Operation) -> dict[str, Any]:
    """The machine-readable form `show_operation --json` prints."""
    return {
        "id": op.pk,
        "kind": op.kind,
        "state": op.state,
        "target": op.target.name,
        "request": op.request_id,
        "snapshot": op.snapshot_id,
        "retry_of": op.retry_of_id,
        "attempt": op.attempt,
        "requested_by": op.requested_by_username,
        "worker": f"{op.worker_host}:{op.worker_pid}" if op.worker_pid else "",
        "queued_at": op.queued_at.isoformat() if op.queued_at else None,
        "started_at": op.started_at.isoformat() if op.started_at else None,
        "finished_at": op.finished_at.isoformat() if op.finished_at else None,
        "heartbeat_at": op.heartbeat_at.isoformat() if op.heartbeat_at else None,
        "progress": {
            "done": op.progress_done,
            "total": op.progress_total,
            "unit": op.progress_unit,
            "percent": op.percent,
            "label": op.progress_label,
            "eta_seconds": eta_seconds(op),
        },
        "result": op.result,
        "error": op.error,
    }
