"""Rehearsing a rollback request: its stored plan, run on a scratch copy restored from its snapshot.

1. The request's attached snapshot must be verified, of this target, at the
   request's from-heads, with its file present at its recorded size; the plan
   is re-rendered from the script files and must match the stored plan
   fingerprint (gate "plan"'s own check). Otherwise the rehearsal is refused
   (audited) before anything is restored.
2. A scratch copy is made (services/rehearsal/scratch): `pg_restore --jobs N`
   into a new database, or a file copy for SQLite. Meanwhile a thread re-reads
   the snapshot file's SHA-256; nothing runs on the copy unless it matches the
   recorded one (else the rehearsal fails and the copy is dropped). Its heads
   must be the snapshot's.
3. Rows and non-null values are counted on the copy, then the executor's own
   downgrade (rollback.execute.downgrade_in_transaction) runs there: same
   isolation level, one transaction, `transaction_per_migration=False`.
   Each step is timed. Then the copy is counted again. On PostgreSQL without
   a round trip, values are counted only in the columns the static analysis
   says are dropped (a column dropped that it missed rolls the transaction
   back: all is counted, the downgrade runs again), and only the tables the
   transaction wrote or whose data file changed are counted again
   (compare.rows_after); docs/design.md "Rehearsals" says why that is exact.
4. Optionally the round trip: upgrade back step by step, compare each step's
   schema with the one before its downgrade, the rows with those before, and
   `pg_dump --schema-only` with the snapshot's.
5. The result is recorded, the approvers are mailed, then the scratch copy is
   dropped (always). The production target is only read (its heads, never
   locked, never written).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import sqlalchemy as sa
from alembic import command
from django.conf import settings
from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, Rehearsal, RehearsalStatus, RollbackRequest, RollbackStatus
from opsapp.services.actors import Actor
from opsapp.services.alembic_api import make_config
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.catalog.sync import read_current_heads
from opsapp.services.errors import OpsError
from opsapp.services.isolation import sqlstate_of
from opsapp.services.rehearsal import compare, scratch
from opsapp.services.rehearsal.document import schema_sha256
from opsapp.services.rehearsal.summary import result_line
from opsapp.services.rollback.execute import downgrade_in_transaction, execution_connection, failed_step
from opsapp.services.rollback.gate import check_plan
from opsapp.services.rollback.plan import Preview
from opsapp.services.snapshots.lifecycle import snapshot_file_missing, snapshot_file_problem, snapshot_path
from opsapp.targets import TargetConfig, get_target, mask_url

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# (done, total): the restore is the first of 1 + the plan's steps; each reverted step one more.
Counter = Callable[[int, int], None]


class RehearsalRefused(OpsError):
    """The rehearsal cannot start: no usable snapshot, or the plan no longer matches. Audited; nothing restored."""


def _load(request_id: int) -> RollbackRequest:
    try:
        return RollbackRequest.objects.select_related("target", "snapshot", "snapshot__target").get(pk=request_id)
    except RollbackRequest.DoesNotExist:
        raise OpsError(f"Rollback request #{request_id} does not exist.", reason="not_found") from None


def refuse_rehearsal(request: RollbackRequest, message: str, actor: Actor, reason: str = "queued") -> RehearsalRefused:
    """Audit a refused rehearsal (nothing restored) and return the error to raise."""
    append_event(
        action=AuditAction.REHEARSAL_FAILED,
        outcome=AuditOutcome.REFUSED,
        actor=actor,
        message=f"Rehearsal refused: {message}",
        detail={"reason": reason},
        **request_context(request),
    )
    return RehearsalRefused(message, target=request.target.name, reason=reason)


def _precheck(request: RollbackRequest, config: TargetConfig, actor: Actor) -> Preview:
    if request.status != RollbackStatus.PENDING:
        raise refuse_rehearsal(
            request, f"Request #{request.pk} is {request.get_status_display()}, not pending.", actor, "status"
        )
    snap = request.snapshot
    if snap is None:
        raise refuse_rehearsal(
            request, f"No snapshot is attached to request #{request.pk}; attach one first.", actor, "snapshot"
        )
    if snap.target_id != request.target_id or snap.status != "verified":
        raise refuse_rehearsal(
            request,
            f"Snapshot #{snap.pk} is {snap.status} or of another target; attach a verified one.",
            actor,
            "snapshot",
        )
    if sorted(snap.heads) != sorted(request.from_heads):
        raise refuse_rehearsal(
            request,
            f"Snapshot #{snap.pk} was taken at heads {snap.heads}, not at the plan's from-heads {request.from_heads}.",
            actor,
            "snapshot",
        )
    # Only that the file is there, and its size; its SHA-256 is re-read beside the restore (_Checksum).
    problem = snapshot_file_missing(snap)
    if problem:
        raise refuse_rehearsal(request, f"Snapshot file check failed: {problem}", actor, "snapshot")
    # Gate "plan"'s own check, with the snapshot's heads standing in for the target's (the copy will hold them).
    message, preview = check_plan(request, config, list(snap.heads), regenerate=True)
    if message or preview is None:
        raise refuse_rehearsal(request, message or "The plan cannot be re-generated.", actor, "plan")
    return preview


class _Checksum:
    """The snapshot file's SHA-256, re-read in a thread while the copy is made from the same file.

    The rehearsal trusts nothing it restored until this agrees with the
    recorded checksum (`problem()` waits for it); a mismatch fails the
    rehearsal and the copy is dropped like any other failure. hashlib
    releases the GIL on large reads, so the hash runs beside pg_restore
    instead of before it (it took ~1 s per 280 MB archive, a whole core).
    """

    def __init__(self, snap) -> None:
        self._result: list[str | None] = []
        self._thread = threading.Thread(target=self._run, args=(snap,), name="snapshot-checksum", daemon=True)
        self._thread.start()

    def _run(self, snap) -> None:
        try:
            self._result.append(snapshot_file_problem(snap))
        except Exception as exc:  # noqa: BLE001 - reported as the file's problem, never lost in a thread
            self._result.append(f"Snapshot #{snap.pk}: the checksum could not be computed: {exc}")

    def problem(self) -> str | None:
        self._thread.join()
        return self._result[0] if self._result else "the checksum thread ended without a result"


def run_rehearsal(
    request_id: int,
    *,
    actor: Actor,
    round_trip: bool = False,
    progress: Progress | None = None,
    counter: Counter | None = None,
    on_created: Callable[[Rehearsal], None] | None = None,
) -> Rehearsal:
    """Rehearse request `request_id` on a scratch copy of its snapshot; return the recorded Rehearsal.

    `progress` gets each phase as text, `counter` the phases done of all
    (the restore, then each step), `on_created` the Rehearsal row as soon as
    it exists (before the restore).

    A rehearsal whose downgrade fails is returned with status `failed` (the
    failing revision, statement and SQLSTATE recorded), not raised. Raises
    RehearsalRefused (nothing restored; audited), scratch.RehearsalUnavailable
    (no server may hold the copy; audited) and OpsError for an unknown request
    or target. The approvers are emailed the result when a code is active.
    """
    say = progress or (lambda _text: None)
    request = _load(request_id)
    config = get_target(request.target.name)
    say("checking the snapshot and re-generating the plan")
    preview = _precheck(request, config, actor)
    snap = request.snapshot
    checksum = _Checksum(snap)
    with ExitStack() as stack:
        stack.callback(checksum.problem)  # never leave the thread reading after the rehearsal ends
        try:
            if config.is_postgresql:
                server = scratch.choose_server(config)
                _drop_leftovers(server)
                copy = stack.enter_context(scratch.postgres_scratch(server, request.pk))
            else:
                copy = stack.enter_context(scratch.sqlite_scratch(snapshot_path(snap), request.pk))
        except scratch.RehearsalUnavailable as exc:
            raise refuse_rehearsal(request, str(exc), actor, "unavailable") from exc
        rehearsal = Rehearsal.objects.create(
            request=request,
            snapshot=snap,
            started_by=actor.username[:150],
            plan_fingerprint=request.plan_fingerprint,
            script_fingerprint=request.script_fingerprint,
            isolation_level=config.isolation_level,
            server=copy.server_label,
            scratch_name=copy.name,
            round_trip=round_trip,
        )
        append_event(
            action=AuditAction.REHEARSAL_STARTED,
            outcome=AuditOutcome.INFO,
            actor=actor,
            message=f"Rehearsal #{rehearsal.pk} of request #{request.pk} started on a copy of snapshot #{snap.pk} "
            f"({copy.server_label}, {copy.name}).",
            detail={"rehearsal": rehearsal.pk, "scratch": copy.name, "round_trip": round_trip},
            **request_context(request),
        )
        if on_created is not None:
            on_created(rehearsal)
        _Run(request, rehearsal, config, preview, copy, actor, say, counter, checksum).run()
        rehearsal.refresh_from_db()
        # The approvers hear the result before the copy is dropped: on PostgreSQL 15 DROP DATABASE waits
        # for a server-wide checkpoint (seconds on a busy server). The drop still always follows (the stack).
        _notify(request, rehearsal, actor)
        say("dropping the scratch copy")
    return rehearsal


def _drop_leftovers(server: scratch.Server) -> None:
    """Copies left on this server by dead rehearsals go first (reconcile does every server)."""
    try:
        scratch.drop_leftovers([server])
    except Exception:  # noqa: BLE001 - a failing clean-up must not block a rehearsal
        log.exception("dropping leftover scratch copies failed")


class _Run:
    """One rehearsal on a live scratch copy; records its outcome on `rehearsal`."""

    def __init__(self, request, rehearsal, config, preview, copy, actor, say, counter=None, checksum=None) -> None:
        self.request: RollbackRequest = request
        self.rehearsal: Rehearsal = rehearsal
        self.preview: Preview = preview
        self.copy = copy
        self.actor: Actor = actor
        self.say: Progress = say
        self.count: Counter = counter or (lambda _done, _total: None)
        self.config = config
        self.checksum: _Checksum | None = checksum
        self.scratch_config = dataclasses.replace(config, url=copy.url)
        self.started = time.monotonic()

    def _progress(self, text: str) -> None:
        Rehearsal.objects.filter(pk=self.rehearsal.pk).update(progress=text[:200])
        self.say(text)

    def run(self) -> None:
        snap = self.request.snapshot
        try:
            self._progress(f"restoring snapshot #{snap.pk} into {self.copy.name}")
            began = time.monotonic()
            try:
                if self.config.is_postgresql:
                    scratch.restore_parallel(snapshot_path(snap), self.copy.url, settings.OPS_REHEARSAL_RESTORE_JOBS)
            except OpsError as exc:
                # An altered file may break the restore itself: the checksum is the reason to report then.
                problem = self.checksum.problem() if self.checksum is not None else None
                if problem:
                    raise OpsError(f"Snapshot file check failed: {problem} Nothing was run on the copy.") from exc
                raise
            restore_ms = _ms(began)
            problem = self.checksum.problem() if self.checksum is not None else None
            if problem:
                raise OpsError(f"Snapshot file check failed: {problem} Nothing was run on the copy.")
            heads = read_current_heads(self.scratch_config)
            if sorted(heads) != sorted(snap.heads):
                raise OpsError(f"The restored copy is at heads {heads}, not the snapshot's {snap.heads}.")
            self.count(1, len(self.preview.steps) + 1)
            with execution_connection(self.scratch_config) as conn:
                self._downgrade_and_measure(conn, restore_ms)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the rehearsal
            if self._still_running():
                self._fail(exc)
            else:
                log.exception("rehearsal %s failed after recording its result", self.rehearsal.pk)

    def _still_running(self) -> bool:
        return Rehearsal.objects.filter(pk=self.rehearsal.pk, status=RehearsalStatus.RUNNING).exists()

    def _downgrade_and_measure(self, conn: sa.Connection, restore_ms: int) -> None:
        version_table = self.preview.version_table
        # PostgreSQL without a round trip: values are counted before only in the columns the plan drops
        # (its static analysis; checked inside the downgrade's transaction below, which runs again with
        # everything counted if a dropped column was missed); after it, only the tables it changed.
        storage = (
            compare.storage_of(conn, version_table)
            if self.config.is_postgresql and not self.rehearsal.round_trip
            else None
        )
        columns_before = compare.columns_of(conn, version_table) if storage is not None else {}
        before = compare.measure(conn, version_table, self._planned_drops() if storage is not None else None)
        states = [compare.schema_of(conn, version_table)] if self.rehearsal.round_trip else []
        written: set[str] | None = None
        conn.commit()
        steps: list[dict[str, Any]] = []
        completed: list[str] = []
        total = len(self.preview.steps)
        mark = [time.monotonic()]

        def on_step(revisions: list[str], step_conn: sa.Connection) -> None:
            steps.append({"revisions": revisions, "ms": _ms(mark[0])})
            if self.rehearsal.round_trip:
                states.append(compare.schema_of(step_conn, version_table))
            self._progress(f"step {len(steps)} of {total}: reverted {', '.join(revisions)}")
            self.count(1 + len(steps), 1 + total)
            mark[0] = time.monotonic()

        self._progress(f"downgrading the copy to {self.request.to_revision}")
        recounted = False
        while True:
            began = time.monotonic()
            mark[0] = began
            try:
                with conn.begin():
                    downgrade_in_transaction(
                        conn, self.scratch_config, self.preview, self.request.to_revision, completed, on_step=on_step
                    )
                    if storage is not None:
                        written = compare.tables_written(conn)  # only readable before the commit
                        missed = compare.uncounted_drops(before, columns_before, compare.columns_of(conn))
                        if missed and recounted:
                            raise OpsError(f"Dropped columns {sorted(missed)} could not be measured on the copy.")
                        if missed:
                            raise _Uncounted(missed)  # rolls the copy back to what was counted
            except _Uncounted as uncounted:
                # A column the plan's text does not name (e.g. dropped by dynamic SQL) was dropped: count
                # every value as it was, then run the downgrade again on the rolled-back copy.
                log.info("rehearsal %s: uncounted dropped columns %s", self.rehearsal.pk, sorted(uncounted.columns))
                before = compare.measure(conn, version_table)
                conn.commit()
                recounted = True
                steps.clear()
                completed.clear()
                continue
            except Exception as exc:  # noqa: BLE001 - the failure is the rehearsal's finding
                self._fail(exc, failed_step(exc, self.preview.steps, completed), restore_ms=restore_ms, steps=steps)
                return
            break
        downgrade_ms = _ms(began)
        schema_after = compare.schema_of(conn, version_table)
        if storage is not None and written is not None:
            after = compare.rows_after(conn, before, storage, written, schema_after, version_table)
        else:
            after = compare.measure(conn, version_table)
        conn.commit()
        report: dict[str, Any] = {}
        if self.rehearsal.round_trip:
            self._progress("round trip: upgrading the copy back")
            report = self._round_trip(conn, steps, states, before)
        self._succeed(restore_ms, downgrade_ms, steps, before, after, schema_after, report)

    def _planned_drops(self) -> dict[str, set[str]]:
        """{table: columns} the static analysis found dropped (request.destructive)."""
        drops: dict[str, set[str]] = {}
        for item in self.request.destructive or []:
            if str(item.get("kind", "")).upper() == "DROP COLUMN" and item.get("table") and item.get("column"):
                drops.setdefault(str(item["table"]), set()).add(str(item["column"]))
        return drops

    # ------------------------------------------------------------ round trip
    def _round_trip(self, conn: sa.Connection, steps: list[dict[str, Any]], states: list, before) -> dict[str, Any]:
        version_table = self.preview.version_table
        migrations: list[dict[str, Any]] = []
        report: dict[str, Any] = {"migrations": migrations}
        for index in reversed(range(len(steps))):
            revisions = steps[index]["revisions"]
            try:
                with conn.begin():
                    for revision in revisions:
                        command.upgrade(make_config(self.scratch_config, connection=conn), revision)
            except Exception as exc:  # noqa: BLE001 - an upgrade that fails is a finding too
                migrations.append({"revisions": revisions, "error": _error_text(exc)})
                report["error"] = f"upgrading {', '.join(revisions)} back failed; round trip stopped"
                report["ok"] = False
                return report
            found = compare.schema_of(conn, version_table)
            conn.commit()
            differences = compare.schema_differences(states[index], found)
            if differences:
                migrations.append({"revisions": revisions, "differences": differences})
        after = compare.measure(conn, version_table)
        conn.commit()
        report["rows"], report["values"] = compare.lost_for_good(before, after)
        report["schema_diff"] = ""
        if self.config.is_postgresql:
            try:
                report["schema_diff"] = compare.schema_text_diff(
                    compare.snapshot_schema_text(snapshot_path(self.request.snapshot)),
                    compare.database_schema_text(self.copy.url),
                )
            except OpsError as exc:
                report["error"] = str(exc)
        report["ok"] = not (migrations or report["rows"] or report["values"] or report["schema_diff"])
        return report

    # ------------------------------------------------------------ results
    def _succeed(self, restore_ms, downgrade_ms, steps, before, after, schema_after, report) -> None:
        destroyed = compare.destroyed(before, schema_after, after)
        duration_ms = _ms(self.started)
        updated = Rehearsal.objects.filter(pk=self.rehearsal.pk, status=RehearsalStatus.RUNNING).update(
            status=RehearsalStatus.SUCCEEDED,
            finished_at=timezone.now(),
            restore_ms=restore_ms,
            downgrade_ms=downgrade_ms,
            duration_ms=duration_ms,
            steps=steps,
            rows_before={t: m["rows"] for t, m in before.items()},
            rows_after={t: m["rows"] for t, m in after.items()},
            destroyed=destroyed,
            schema_after=schema_after,
            round_trip_report=report,
            progress="done",
        )
        self.rehearsal.refresh_from_db()
        if updated:
            append_event(
                action=AuditAction.REHEARSAL_SUCCEEDED,
                outcome=AuditOutcome.SUCCESS,
                actor=self.actor,
                message=f"Rehearsal #{self.rehearsal.pk}: {result_line(self.rehearsal)}.",
                detail={
                    "rehearsal": self.rehearsal.pk,
                    "snapshot": self.rehearsal.snapshot_id,
                    "plan_fingerprint": self.rehearsal.plan_fingerprint,
                    "duration_ms": duration_ms,
                    "destroyed": destroyed,
                    # Ties the recorded schema to the chain: the evidence verifier recomputes it offline.
                    "schema_after_sha256": schema_sha256(schema_after),
                    "round_trip_ok": report.get("ok") if report else None,
                },
                **request_context(self.request),
            )

    def _fail(self, exc: BaseException, failed=None, *, restore_ms: int | None = None, steps=None) -> None:
        cause = getattr(exc, "orig", None) or exc
        error = mask_url(f"{type(cause).__name__}: {cause}").strip()[:4000]
        sqlstate = sqlstate_of(exc)
        updated = Rehearsal.objects.filter(pk=self.rehearsal.pk, status=RehearsalStatus.RUNNING).update(
            status=RehearsalStatus.FAILED,
            finished_at=timezone.now(),
            restore_ms=restore_ms,
            duration_ms=_ms(self.started),
            steps=steps or [],
            failed_revision=(failed.revision if failed else "")[:255],
            failed_statement=failed.statement if failed else "",
            sqlstate=sqlstate[:5],
            error=error,
            progress="failed",
        )
        self.rehearsal.refresh_from_db()
        if updated:
            append_event(
                action=AuditAction.REHEARSAL_FAILED,
                outcome=AuditOutcome.FAILURE,
                actor=self.actor,
                message=f"Rehearsal #{self.rehearsal.pk}: {result_line(self.rehearsal)}",
                detail={
                    "rehearsal": self.rehearsal.pk,
                    "snapshot": self.rehearsal.snapshot_id,
                    "failed_revision": self.rehearsal.failed_revision,
                    "failed_statement": self.rehearsal.failed_statement,
                    "sqlstate": sqlstate,
                },
                **request_context(self.request),
            )


class _Uncounted(Exception):
    """Raised inside the downgrade's transaction to roll it back: dropped columns whose values were not counted."""

    def __init__(self, columns: set) -> None:
        super().__init__(f"uncounted dropped columns: {sorted(columns)}")
        self.columns = columns


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return mask_url(f"{type(cause).__name__}: {cause}").strip()[:2000]


def _notify(request: RollbackRequest, rehearsal: Rehearsal, actor: Actor) -> None:
    """Send the approvers' email again, now carrying the rehearsal's result, when a code is active."""
    from opsapp.services.rollback.codes import issue_code

    request.refresh_from_db()
    if request.status != RollbackStatus.PENDING or not request.code_hash:
        return
    try:
        issue_code(request, actor=actor)
    except OpsError:
        log.exception("re-sending the code of request %s with its rehearsal result failed", request.pk)


# ------------------------------------------------------------------ reconcile
def reconcile(*, actor: Actor) -> tuple[list[str], list[Rehearsal]]:
    """Drop scratch copies whose rehearsal died; mark their `running` rehearsals `interrupted` (audited).

    Liveness comes from the scratch copy's lock (scratch.py), never from time.
    Returns (dropped scratch names, rehearsals marked interrupted).
    """
    dropped = scratch.drop_leftovers()
    live = scratch.live_names()
    interrupted: list[Rehearsal] = []
    if live is None:  # a server is unreachable: a rehearsal there may still run
        return dropped, interrupted
    for rehearsal in Rehearsal.objects.filter(status=RehearsalStatus.RUNNING).select_related("request__target"):
        if rehearsal.scratch_name in live:
            continue
        message = (
            f"The process running rehearsal #{rehearsal.pk} stopped before recording a result; "
            f"its scratch copy {rehearsal.scratch_name} is gone."
        )
        changed = Rehearsal.objects.filter(pk=rehearsal.pk, status=RehearsalStatus.RUNNING).update(
            status=RehearsalStatus.INTERRUPTED, finished_at=timezone.now(), error=message, progress="interrupted"
        )
        if changed:
            rehearsal.refresh_from_db()
            interrupted.append(rehearsal)
            append_event(
                action=AuditAction.REHEARSAL_INTERRUPTED,
                outcome=AuditOutcome.FAILURE,
                actor=actor,
                message=message,
                detail={"rehearsal": rehearsal.pk, "scratch": rehearsal.scratch_name},
                **request_context(rehearsal.request),
            )
    return dropped, interrupted
