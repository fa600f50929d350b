"""One function per kind of operation (RUNNERS), run by a worker (worker.run) with the operation's heartbeat.

Each holds the target's lock (services/locks.py) for its whole run, so two
workers never run two operations on one target at once, while operations on
different targets run in parallel (a restore takes no target lock: it only
reads the snapshot's file). A job waits up to OPS_JOB_LOCK_WAIT_SECONDS
for the lock (its label says who holds it). A downgrade takes the lock on its
own working connection (rollback.execute), as the gate requires. A rehearsal
takes no target lock: it only reads the target's heads and works on a scratch
copy (services/rehearsal).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from django.conf import settings
from django.utils import timezone
from sqlalchemy.engine import make_url

from opsapp.models import AuditAction, AuditOutcome, Operation, OperationKind, Rehearsal, RehearsalStatus, Snapshot
from opsapp.services.actors import Actor
from opsapp.services.alembic_api import connect
from opsapp.services.catalog.sync import sync_target
from opsapp.services.errors import GateRefused, OpsError, RollbackFailed
from opsapp.services.locks import LockBusy, LockHolder, current_holder, target_lock
from opsapp.services.operations.queue import audit_operation
from opsapp.services.operations.worker import Heartbeat, OperationCancelled
from opsapp.services.rollback.execute import execute_request
from opsapp.services.rollback.requests import attach_snapshot
from opsapp.services.snapshots.estimate import estimate_dump_size
from opsapp.services.snapshots.lifecycle import take_snapshot
from opsapp.services.snapshots.postgres import RestoreProgress
from opsapp.targets import TargetConfig, get_target

_WAIT_POLL_SECONDS = 0.5


def database_size(config: TargetConfig) -> int | None:
    """The target database's size in bytes (the snapshot's progress total), None when it cannot be read."""
    try:
        if config.is_sqlite:
            return Path(make_url(config.sqlalchemy_url).database or "").stat().st_size
        with connect(config, isolation_level="AUTOCOMMIT") as conn:
            return int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar() or 0)
    except (OSError, OpsError, sa.exc.SQLAlchemyError):
        return None


@contextmanager
def _job_lock(config: TargetConfig, op: Operation, actor: Actor, beat: Heartbeat) -> Iterator[None]:
    holder = LockHolder(user=actor.username, operation=f"op{op.pk} {op.kind}", since=timezone.now())
    _wait_until_free(config, beat)
    with target_lock(config, holder=holder, wait_seconds=settings.OPS_JOB_LOCK_WAIT_SECONDS):
        beat.report(progress_label="")
        yield


def _wait_until_free(config: TargetConfig, beat: Heartbeat) -> None:
    """Wait (cancellably, naming the holder) until no other operation holds the target's lock."""
    deadline = time.monotonic() + settings.OPS_JOB_LOCK_WAIT_SECONDS
    while True:
        beat.check()
        holder = current_holder(config)
        if holder is None:
            return
        if time.monotonic() >= deadline:
            raise LockBusy(
                f"Target {config.name!r} is locked by {holder.describe()}; gave up after waiting "
                f"{settings.OPS_JOB_LOCK_WAIT_SECONDS:g} s (OPS_JOB_LOCK_WAIT_SECONDS).",
                target=config.name,
                holder=holder,
            )
        beat.report(progress_label=f"waiting for the target's lock, held by {holder.describe()}"[:500])
        time.sleep(_WAIT_POLL_SECONDS)


# ------------------------------------------------------------------ snapshot
def run_snapshot(op: Operation, actor: Actor, beat: Heartbeat) -> dict[str, Any]:
    """pg_dump (or SQLite backup) with progress = bytes written against the archive's estimated size; cancellable.

    The total is an estimate from this target's earlier snapshots
    (snapshots.estimate), said so on the operation; without one there is no
    total and no ETA, only the bytes written.
    """
    config = get_target(op.target.name)
    with _job_lock(config, op, actor, beat):
        estimate = estimate_dump_size(op.target, database_size(config))
        beat.report(
            progress_done=0,
            progress_total=estimate.total,
            progress_estimate=estimate.basis[:300],
            progress_since=timezone.now(),
            progress_label="dumping",
        )

        def created(snap: Snapshot) -> None:
            Operation.objects.filter(pk=op.pk).update(snapshot=snap)

        def progress(size: int) -> None:
            beat.report(progress_done=size)
            beat.check()  # raising here stops pg_dump; take_snapshot removes the file and fails the row

        snap = take_snapshot(op.target.name, actor=actor, progress=progress, on_created=created)
    # The estimate served while it ran; the finished bar ends at the file's real size.
    beat.report(progress_done=snap.size, progress_total=snap.size, progress_label="verified")
    if op.request_id:
        attach_snapshot(op.request, snap.pk, actor=actor)
        beat.report(progress_label=f"verified and attached to rollback request #{op.request_id}")
    return {
        "snapshot": snap.pk,
        "status": snap.status,
        "size": snap.size,
        "sha256": snap.sha256,
        "heads": snap.heads,
        "estimated_size": estimate.total,
    }


# ---------------------------------------------------------------------- sync
def run_sync(op: Operation, actor: Actor, beat: Heartbeat) -> dict[str, Any]:
    """sync_target under the target's lock; a cancel is honoured at its safe points, before anything is written.

    Safe points: while it waits for the lock, after the script directory was
    read, and under the target row's lock just before the first write. Each
    reads the operation row for a cancel request (not waiting for a beat).
    Once the writing transaction passed its last safe point the sync finishes.
    """
    config = get_target(op.target.name)
    try:
        with _job_lock(config, op, actor, beat):
            target = sync_target(op.target.name, actor=actor, checkpoint=beat.check_now)
    except OperationCancelled:
        audit_operation(
            op,
            AuditAction.OPERATION_CANCELLED,
            AuditOutcome.INFO,
            actor,
            f"Operation #{op.pk} (sync of {op.target.name}) stopped at a safe point before writing, as "
            f"{beat.cancelled_by or 'an operator'} asked: the catalog is unchanged.",
        )
        raise
    return {"state": target.state, "heads": target.current_heads, "pending": target.pending_count}


# ----------------------------------------------------------------- downgrade
def run_downgrade(op: Operation, actor: Actor, beat: Heartbeat) -> dict[str, Any]:
    """Gates 1-5 again under the target's lock, the spent code confirmed last, then the atomic downgrade.

    Never retried: a failure or an interruption needs a new code.
    """
    request = op.request
    assert request is not None
    config = get_target(op.target.name)
    steps = list(request.steps)
    first = f"reverting {steps[0]} (step 1 of {len(steps)})" if steps else "checking the gate"
    beat.report(progress_done=0, progress_total=len(steps), progress_label="waiting for the target's lock")
    _wait_until_free(config, beat)
    beat.report(progress_label="checking the gate under the target's lock")

    def on_connection(conn: sa.Connection | None) -> None:
        if conn is None:
            beat.set_aborter(None)
            return
        raw = conn.connection.dbapi_connection
        # psycopg's cancel() and sqlite3's interrupt() are safe from another thread.
        beat.set_aborter(raw.cancel if hasattr(raw, "cancel") else raw.interrupt)
        beat.report(progress_label=first)

    def progress(revision: str, done: int, total: int) -> None:
        label = f"reverted {revision}"
        if done < len(steps):
            label = f"reverting {steps[done]} (step {done + 1} of {total})"
        beat.report(progress_done=done, progress_label=label[:500])
        beat.check()  # an abort raises here: the whole downgrade rolls back

    try:
        result = execute_request(request.pk, actor=actor, accepted=True, progress=progress, on_connection=on_connection)
    except GateRefused as exc:
        raise OpsError(
            f"The code was accepted when the downgrade was queued, but gate '{exc.gate}' failed when the worker "
            f"checked again under the target's lock: {exc} The code is spent; issue a new code to try again.",
            gate=exc.gate,
        ) from exc
    except RollbackFailed as exc:
        if beat.cancelled.is_set():
            raise OpsError(
                f"Aborted by {beat.cancelled_by or 'an operator'}: the whole downgrade was rolled back. {exc}"
            ) from exc
        raise
    beat.report(progress_done=len(steps), progress_label="done")
    return {"request": result.request_id, "status": result.status, "heads": result.heads, "message": result.message}


# ----------------------------------------------------------------- rehearsal
class RehearsalFailed(OpsError):
    """The rehearsal ran and its downgrade failed on the copy: the finding is the operation's failure."""


def run_rehearsal_operation(op: Operation, actor: Actor, beat: Heartbeat) -> dict[str, Any]:
    """The request's plan on a scratch copy of its snapshot; progress: the restore, then each step.

    The Rehearsal's id is on the operation (`result`) as soon as it exists, so
    reconcile can close it if this worker dies. A refusal (no usable snapshot,
    the plan changed) fails the operation with the refusal's message; a
    rehearsal whose downgrade failed fails it too, keeping the result.
    """
    from opsapp.services.rehearsal.run import run_rehearsal
    from opsapp.services.rehearsal.summary import result_line

    request = op.request
    assert request is not None
    beat.report(progress_done=0, progress_total=len(request.steps) + 1, progress_label="checking the snapshot")

    def created(rehearsal: Rehearsal) -> None:
        Operation.objects.filter(pk=op.pk).update(result={"rehearsal": rehearsal.pk})

    def counted(done: int, total: int) -> None:
        beat.report(progress_done=done, progress_total=total)

    rehearsal = run_rehearsal(
        request.pk,
        actor=actor,
        round_trip=bool((op.params or {}).get("round_trip")),
        progress=lambda text: beat.report(progress_label=text[:500]),
        counter=counted,
        on_created=created,
    )
    line = f"Rehearsal #{rehearsal.pk}: {result_line(rehearsal)}."
    result = {
        "rehearsal": rehearsal.pk,
        "status": rehearsal.status,
        "message": line,
        "round_trip_ok": (rehearsal.round_trip_report or {}).get("ok") if rehearsal.round_trip else None,
    }
    if rehearsal.status != RehearsalStatus.SUCCEEDED:
        raise RehearsalFailed(line, result=result)
    beat.report(progress_label="done")
    return result


# ------------------------------------------------------------------- restore
def run_restore(op: Operation, actor: Actor, beat: Heartbeat) -> dict[str, Any]:
    """pg_restore of the operation's snapshot into its restore destination (a name; the URL is read here).

    Progress: archive bytes read of the file's size, the items restored in
    the label. A cancel kills pg_restore (its single transaction rolls back).
    Takes no target lock: the target is not touched, only its snapshot file
    is read. Never retried.
    """
    from opsapp.services.snapshots.restore import restore_to_destination

    assert op.snapshot is not None
    destination = str((op.params or {}).get("destination") or "")
    beat.report(
        progress_done=0,
        progress_total=op.snapshot.size,
        progress_since=timezone.now(),
        progress_label=f"checking destination {destination!r}"[:500],
    )
    beat.check_now()

    def progress(p: RestoreProgress) -> None:
        beat.report(progress_done=p.bytes_done, progress_label=f"{p.items} item(s) restored; {p.action}"[:500])
        beat.check()  # raising here kills pg_restore: nothing is committed

    try:
        result = restore_to_destination(
            op.snapshot.pk, destination, actor=actor, progress=progress, on_process=beat.set_aborter
        )
    except OpsError as exc:
        if not beat.cancelled.is_set():
            raise
        message = (
            f"Cancelled by {beat.cancelled_by or 'an operator'} while it ran: pg_restore was stopped and its "
            f"single transaction rolled back; destination {destination!r} is as it was."
        )
        audit_operation(op, AuditAction.OPERATION_CANCELLED, AuditOutcome.INFO, actor, f"Operation #{op.pk}: {message}")
        raise OperationCancelled(message) from exc
    beat.report(progress_done=op.snapshot.size, progress_label="restored and checked")
    return result


RUNNERS = {
    OperationKind.SNAPSHOT: run_snapshot,
    OperationKind.SYNC: run_sync,
    OperationKind.DOWNGRADE: run_downgrade,
    OperationKind.REHEARSAL: run_rehearsal_operation,
    OperationKind.RESTORE: run_restore,
}
