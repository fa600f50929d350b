"""Putting operations on the queue, cancelling them, and reading them back.

An Operation row and its queue entry are created in one transaction on the
console's database, so a worker never sees a job without its row, and a
failed enqueue leaves no row behind. Only the row's id goes on the queue.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection, transaction
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
    Snapshot,
)
from opsapp.models.operation import UNCANCELLABLE_WHILE_RUNNING
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.catalog.sync import ensure_target_row
from opsapp.services.errors import OpsError, SnapshotError
from opsapp.targets import get_target

_UNITS = {
    OperationKind.DOWNGRADE: "steps",
    OperationKind.REHEARSAL: "steps",
    OperationKind.SNAPSHOT: "bytes",
    OperationKind.RESTORE: "bytes",
}


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
    params: dict[str, Any] | None = None,
    snapshot: Snapshot | None = None,
) -> Operation:
    """Create an Operation and enqueue `run_operation(id)`; both in one transaction. Must run inside one."""
    from opsapp.services.operations.tasks import run_operation

    get_target(target_name)  # raises TargetNotConfigured for a bad name: no row, no job
    target = ensure_target_row(target_name)
    op = Operation.objects.create(
        kind=kind,
        target=target,
        request=request,
        snapshot=snapshot or (request.snapshot if request is not None and kind == OperationKind.DOWNGRADE else None),
        retry_of=retry_of,
        attempt=(retry_of.attempt + 1) if retry_of else 1,
        requested_by_id=actor.user_id,
        requested_by_username=actor.username[:150],
        client_ip=actor.client_ip,
        params=params or {},
        progress_unit=_UNITS.get(OperationKind(kind), ""),
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


def enqueue_rehearsal(request_id: int, *, actor: Actor, round_trip: bool = False) -> Operation:
    """Queue a rehearsal of rollback request `request_id`; return the queued Operation.

    The worker makes every check (snapshot, plan) and audits a refusal. Here
    only: the request exists and no rehearsal of it is queued or running
    already (one at a time per request; a duplicate is refused, audited).
    Raises OpsError.
    """
    from opsapp.services.rehearsal.run import refuse_rehearsal

    request = RollbackRequest.objects.select_related("target").filter(pk=request_id).first()
    if request is None:
        raise OpsError(f"Rollback request #{request_id} does not exist.", reason="not_found")
    with transaction.atomic():
        # Serialises two clicks on one request: the second sees the first's operation.
        RollbackRequest.objects.select_for_update().filter(pk=request.pk).first()
        queued = Operation.objects.filter(
            request=request, kind=OperationKind.REHEARSAL, state__in=ACTIVE_STATES
        ).first()
        if queued is None:
            return create_operation(
                OperationKind.REHEARSAL,
                request.target.name,
                actor=actor,
                request=request,
                params={"round_trip": bool(round_trip)},
            )
    raise refuse_rehearsal(
        request, f"A rehearsal of request #{request.pk} is already {queued.state} as operation #{queued.pk}.", actor
    )


def enqueue_restore(snapshot_id: int, destination: str, *, actor: Actor) -> Operation:
    """Queue a restore of snapshot `snapshot_id` into restore destination `destination`; audited.

    Only the destination's name enters the operation and the queue; the
    worker reads its URL (opsapp.destinations). Checked here: the snapshot is
    restorable, the destination is configured and valid, and no other restore
    into it is queued or running. The worker checks again (empty database, not
    a target) before pg_restore starts. Raises SnapshotError (refusals audited).
    """
    from opsapp.destinations import get_destination
    from opsapp.services.snapshots.restore import check_restorable

    snap = Snapshot.objects.select_related("target").filter(pk=snapshot_id).first()
    if snap is None:
        raise SnapshotError(f"Snapshot #{snapshot_id} does not exist.", reason="not_found", snapshot_id=snapshot_id)
    try:
        check_restorable(snap, hash_file=False)  # the worker hashes the file before pg_restore starts
        try:
            config = get_destination(destination)
        except OpsError as exc:
            raise SnapshotError(str(exc), reason=exc.reason) from exc
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Serialises two clicks for one destination: the second sees the first's operation.
                with connection.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"ops-restore:{config.name}"])
            busy = Operation.objects.filter(
                kind=OperationKind.RESTORE, params__destination=config.name, state__in=ACTIVE_STATES
            ).first()
            if busy is not None:
                raise SnapshotError(
                    f"A restore into destination {config.name!r} is already {busy.state} as operation #{busy.pk}.",
                    reason="destination_busy",
                )
            op = create_operation(
                OperationKind.RESTORE,
                snap.target.name,
                actor=actor,
                snapshot=snap,
                params={"destination": config.name},
            )
            append_event(
                action=AuditAction.RESTORE_QUEUED,
                outcome=AuditOutcome.INFO,
                actor=actor,
                target=snap.target.name,
                snapshot_id=snap.pk,
                message=f"Restore of snapshot #{snap.pk} of {snap.target.name} into destination {config.name!r} "
                f"queued as operation #{op.pk}.",
                detail={"operation": op.pk, "destination": config.name, "into": config.masked_url},
            )
            return op
    except SnapshotError as exc:
        append_event(
            action=AuditAction.SNAPSHOT_RESTORED,
            outcome=AuditOutcome.REFUSED,
            actor=actor,
            target=snap.target.name,
            snapshot_id=snap.pk,
            message=f"Restore not queued: {exc}",
            detail={"destination": destination, "reason": exc.reason},
        )
        exc.snapshot_id = snap.pk
        raise


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
    """Cancel a queued operation at once, or ask a running one to stop.

    A queued one turns `cancelled` here (its worker will skip it). A running
    snapshot is stopped by its worker within a heartbeat (the dump killed,
    its file removed); a running restore likewise (pg_restore killed, its
    single transaction rolled back); a running downgrade is aborted as a
    whole (its transaction rolls back); a running sync stops at its next safe
    point, before it writes the catalog (once it writes, it finishes).
    Audited either way. Raises CannotCancel for a finished operation or a
    running rehearsal.
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
        if op.kind in UNCANCELLABLE_WHILE_RUNNING:
            raise CannotCancel(
                f"Operation #{op.pk} is a {op.kind} that is {op.state}; a running {op.kind} cannot be cancelled"
                + (
                    " (it works on a scratch copy, dropped when it ends)."
                    if op.kind == OperationKind.REHEARSAL
                    else "."
                )
            )
        if not Operation.objects.filter(
            pk=op.pk, state=OperationState.RUNNING, cancel_requested_at__isnull=True
        ).update(cancel_requested_at=now, cancel_requested_by=actor.username[:150]):
            op.refresh_from_db()
            if op.state == OperationState.RUNNING:
                return op  # already asked
            raise CannotCancel(f"Operation #{op.pk} is {op.state}; only a queued or running one can be cancelled.")
        what = _STOP_WHAT.get(OperationKind(op.kind), "stop")
        _audit_cancel(op, actor, f"Operation #{op.pk} ({op.kind} of {op.target.name}): {what} requested.")
    op.refresh_from_db()
    return op


_STOP_WHAT = {
    OperationKind.DOWNGRADE: "abort of the whole downgrade",
    OperationKind.SNAPSHOT: "stop of the running dump",
    OperationKind.RESTORE: "stop of the running pg_restore (its transaction rolls back)",
    OperationKind.SYNC: "stop at the sync's next safe point, before it writes",
}


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


def eta_seconds(op: Operation, now: datetime | None = None) -> int | None:
    """Seconds left at the rate since the counted work began, or None when it cannot be told.

    The rate is measured from `progress_since` (a dump's start), not from
    `started_at`, so a wait for the target's lock does not slow the estimate.
    None before any progress, without a total (a first snapshot of a target:
    its final size cannot be estimated), and once the total is reached or
    passed (a dump that outgrew its estimated size).
    """
    since = op.progress_since or op.started_at
    if op.state != OperationState.RUNNING or not since or not op.progress_total or not op.progress_done:
        return None
    elapsed = ((now or timezone.now()) - since).total_seconds()
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
        "params": op.params,
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
            # Non-empty when `total` is an estimate (a dump's final size): what it was estimated from.
            "estimate": op.progress_estimate,
        },
        "result": op.result,
        "error": op.error,
    }
