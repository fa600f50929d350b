"""Operations whose worker died: marked interrupted, never run again by accident.

A running operation is dead when its liveness lock is free (liveness.py):
the lock is held from before the claim until the result is recorded, so a
free lock proves the worker process is gone. Then:

- snapshot: its `running` Snapshot row fails, its partial file is removed; it
  is queued again (a fresh file, a new Operation with `retry_of`) while
  `attempt` <= OPS_SNAPSHOT_RETRIES;
- downgrade: its request is closed by the rollback reconcile, which decides
  from the target's lock (rollback.execute.reconcile); until the target's
  lock is free too, the operation is left running. Never retried;
- rehearsal: the rehearsal reconcile (rehearsal.run.reconcile) drops every
  scratch copy whose lock is free and marks its Rehearsal `interrupted`; it
  runs at every reconcile, so copies left by any dead rehearsal (in a worker
  or a command) go too. Until the server has dropped the dead worker's
  session (the copy's lock still held), the operation is left running. Never
  retried: rehearse again;
- restore: interrupted. Its pg_restore died with the worker (it reads the
  archive from the worker's pipe and is killed with it), so its single
  transaction rolled back: the destination is as before. Never retried;
- sync: interrupted.

The queue's own row of a dead job is marked failed, so no worker picks it
again (django-tasks-db never re-runs a claimed job either).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from opsapp.models import (
    AuditAction,
    AuditOutcome,
    Operation,
    OperationKind,
    OperationState,
    Rehearsal,
    RehearsalStatus,
    RollbackStatus,
)
from opsapp.services.actors import Actor
from opsapp.services.operations import liveness
from opsapp.services.operations.queue import audit_operation, create_operation
from opsapp.services.operations.worker import actor_of
from opsapp.services.rollback.reconcile import reconcile as reconcile_requests
from opsapp.services.snapshots.lifecycle import fail_interrupted_snapshot

log = logging.getLogger(__name__)


def reconcile_operations(*, actor: Actor) -> list[Operation]:
    """Mark running operations whose worker died `interrupted`; return them (retries are queued)."""
    running = list(
        Operation.objects.select_related("target", "request", "snapshot").filter(state=OperationState.RUNNING)
    )
    dead = [op for op in running if not liveness.worker_alive(op.pk)]
    if any(op.kind == OperationKind.DOWNGRADE for op in dead):
        reconcile_requests(actor=actor)
    reconcile_scratch_copies(actor)
    done: list[Operation] = []
    for op in dead:
        message = _close_work(op, actor)
        if message is None:
            continue
        with transaction.atomic():
            changed = Operation.objects.filter(pk=op.pk, state=OperationState.RUNNING).update(
                state=OperationState.INTERRUPTED, finished_at=timezone.now(), error=message
            )
            if not changed:
                continue
            op.refresh_from_db()
            audit_operation(op, AuditAction.OPERATION_INTERRUPTED, AuditOutcome.FAILURE, actor, message)
            _fail_queue_row(op)
            if op.kind == OperationKind.SNAPSHOT and op.attempt <= settings.OPS_SNAPSHOT_RETRIES:
                retry = create_operation(OperationKind.SNAPSHOT, op.target.name, actor=actor_of(op), retry_of=op)
                op.error = f"{message} Retried as operation #{retry.pk}."
                Operation.objects.filter(pk=op.pk).update(error=op.error)
        done.append(op)
    return done


def _close_work(op: Operation, actor: Actor) -> str | None:
    """Close what the dead worker left open; the operation's message, or None to leave it for later."""
    where = f"{op.worker_host}:{op.worker_pid}" if op.worker_pid else "its worker"
    base = f"The worker ({where}) running operation #{op.pk} stopped before recording a result"
    if op.kind == OperationKind.SNAPSHOT:
        if op.snapshot_id:
            fail_interrupted_snapshot(
                op.snapshot,
                f"{base}; snapshot #{op.snapshot_id} is incomplete and its partial file was removed.",
                actor=actor,
                phase="interrupted",
            )
        return f"{base}; no snapshot file was kept."
    if op.kind == OperationKind.DOWNGRADE and op.request_id:
        op.request.refresh_from_db()
        if op.request.status == RollbackStatus.RUNNING:
            return None  # the target's lock is still held (the server has not seen the connection die yet)
        if op.request.status == RollbackStatus.PENDING:
            return f"{base} before the downgrade started; the code is spent: issue a new code."
        return f"{base}; request #{op.request_id}: {op.request.error or op.request.status}"
    if op.kind == OperationKind.REHEARSAL:
        rehearsal_id = (op.result or {}).get("rehearsal") if isinstance(op.result, dict) else None
        rehearsal = Rehearsal.objects.filter(pk=rehearsal_id).first() if rehearsal_id else None
        if rehearsal is None:
            return f"{base} before its scratch copy was made; nothing to clean up. Rehearse again."
        if rehearsal.status == RehearsalStatus.RUNNING:
            return None  # its scratch copy's lock is still held (the server has not seen the session die yet)
        if rehearsal.status == RehearsalStatus.INTERRUPTED:
            return f"{base}; rehearsal #{rehearsal.pk} interrupted, its scratch copy {rehearsal.scratch_name} dropped."
        return f"{base}; rehearsal #{rehearsal.pk} had recorded its result ({rehearsal.status})."
    if op.kind == OperationKind.RESTORE:
        destination = (op.params or {}).get("destination", "?")
        return (
            f"{base}; its pg_restore stopped with it and its single transaction rolled back, so destination "
            f"{destination!r} is as before. Queue the restore again."
        )
    return f"{base}."


def reconcile_scratch_copies(actor: Actor) -> None:
    """Drop scratch copies of dead rehearsals and mark those rehearsals interrupted; never blocks a worker."""
    from opsapp.services.rehearsal.run import reconcile as reconcile_rehearsals

    try:
        reconcile_rehearsals(actor=actor)
    except Exception:  # noqa: BLE001 - an unreachable rehearsal server must not stop the queue
        log.exception("reconciling the rehearsals' scratch copies failed")


def _fail_queue_row(op: Operation) -> None:
    if not op.task_id:
        return
    from django_tasks_db.models import DBTaskResult

    DBTaskResult.objects.filter(id=op.task_id, status="RUNNING").update(
        status="FAILED",
        finished_at=timezone.now(),
        exception_class_path="opsapp.services.operations.reconcile.WorkerDied",
        traceback=f"operation #{op.pk}: the worker died; reconciled.",
    )
