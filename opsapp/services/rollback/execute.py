"""Executing a rollback request: the gate under the target's lock, then one atomic downgrade.

Order (docs/design.md, "The downgrade gate" and "Execution"):

1. Gates 1-4 (request, snapshot, rehearsal, plan) are checked once without the lock, so
   a request that cannot pass is refused with its real reason even while
   another operation holds the lock.
2. Gate 5: the target's lock is taken with a bounded wait; a timeout refuses
   at gate "lock", naming the holder.
3. Under the lock, gates 1-4 are checked again (this time the SQL preview
   is re-rendered and compared), then gate 6, the code, last.
4. A correct code is consumed by the same conditional UPDATE that marks the
   request `running` (committed and audited before the first statement runs
   on the target, so a crash leaves it `running` for `reconcile`).
5. The downgrade runs in one transaction at the target's isolation level
   with `lock_timeout`, `command.downgrade` on that connection with
   `transaction_per_migration=False`; `alembic_version` is read back and
   compared with the heads Alembic reported for the plan, before COMMIT.
   Serialization failures are retried (each retry audited); any other error
   rolls the whole downgrade back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, RollbackRequest, RollbackStatus
from opsapp.services.actors import Actor
from opsapp.services.alembic_api import create_engine, make_config
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.catalog import sync as catalog
from opsapp.services.errors import OpsError, RollbackFailed, TargetUnreachable
from opsapp.services.isolation import run_serializable, sqlstate_of
from opsapp.services.locks import HeldLock, LockBusy, LockHolder, LockLost, target_lock
from opsapp.services.rollback.expiry import expire_if_stale
from opsapp.services.rollback.gate import (
    check_code,
    check_plan,
    check_rehearsal,
    check_request,
    check_snapshot,
    refuse,
)
from opsapp.services.rollback.plan import Preview
from opsapp.targets import TargetConfig, get_target, mask_url

log = logging.getLogger(__name__)


@dataclass
class ExecutionResult:
    request_id: int
    status: str
    gate: str | None
    message: str
    heads: list[str]


class HeadsMismatch(OpsError):
    """alembic_version after the downgrade is not what the plan says; the transaction is rolled back."""


class TransactionEscape(OpsError):
    """The target's env.py (or a migration) tried to end the console's transaction mid-downgrade."""


# Statements that end or restart the transaction (a savepoint rollback is fine).
_TX_CONTROL = re.compile(r"^\s*(COMMIT|END|ABORT|BEGIN|START\s+TRANSACTION|ROLLBACK(?!\s+TO\b))\b", re.I)
_ESCAPE_HINT = (
    "refused so the downgrade stays one atomic transaction; env.py must run the migrations on "
    "config.attributes['connection'] and leave committing to the console."
)


@contextmanager
def _no_foreign_transaction_end(conn: sa.Connection) -> Iterator[None]:
    """While Alembic runs, refuse any commit/rollback on `conn` that the console did not issue.

    A customer's env.py that calls `connection.commit()` (or executes COMMIT)
    would otherwise make every step before it permanent and the rest run in a
    new transaction: a half-applied downgrade reported as a failure "rolled
    back". The listeners raise before the COMMIT reaches the database.
    """
    armed = True
    engine = conn.engine

    def on_end(_conn) -> None:
        if armed:
            raise TransactionEscape(f"The target's env.py tried to end the console's transaction; {_ESCAPE_HINT}")

    def on_sql(_conn, _cursor, statement, _params, _context, _many) -> None:
        if armed and _TX_CONTROL.match(statement or ""):
            raise TransactionEscape(f"A {statement.split()[0].upper()} was sent during the downgrade; {_ESCAPE_HINT}")

    listeners = (("commit", on_end), ("rollback", on_end), ("before_cursor_execute", on_sql))
    for name, fn in listeners:
        sa.event.listen(engine, name, fn)
    try:
        yield
    finally:
        armed = False
        for name, fn in listeners:
            sa.event.remove(engine, name, fn)


def load_request(request_id: int) -> RollbackRequest:
    try:
        return RollbackRequest.objects.select_related("target", "snapshot", "snapshot__target").get(pk=request_id)
    except RollbackRequest.DoesNotExist:
        raise OpsError(f"Rollback request #{request_id} does not exist.") from None


def heads_or_problem(config: TargetConfig) -> tuple[list[str] | None, str]:
    try:
        return catalog.read_current_heads(config), ""
    except OpsError as exc:
        return None, str(exc)


def check_gates_before_lock(
    request: RollbackRequest, config: TargetConfig, actor: Actor, *, regenerate: bool
) -> Preview | None:
    """Gates 1-4 (request, snapshot, rehearsal, plan), in order; raise the first refusal (audited)."""
    message = expire_if_stale(request)
    if message:
        raise refuse(request, "request", message, actor, {"reason": "expired"})
    message = check_request(request)
    if message:
        raise refuse(request, "request", message, actor)
    heads, problem = heads_or_problem(config)
    message = check_snapshot(request, heads, problem)
    if message:
        raise refuse(request, "snapshot", message, actor, {"current_heads": heads})
    message = check_rehearsal(request, config)
    if message:
        raise refuse(request, "rehearsal", message, actor)
    message, preview = check_plan(request, config, heads, regenerate=regenerate, heads_problem=problem)
    if message:
        raise refuse(request, "plan", message, actor, {"current_heads": heads})
    return preview


def execute_request(
    request_id: int,
    *,
    code: str | None = None,
    actor: Actor,
    accepted: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    on_connection: Callable[[sa.Connection | None], None] | None = None,
) -> ExecutionResult:
    """Check the gate and run the downgrade of request `request_id`.

    With `code`, gate 6 checks that code last (the in-process path of
    `execute_rollback`). With `accepted=True` (a worker running a queued
    downgrade) the code was already checked and spent by the web or the
    command that enqueued it (operations.downgrade.enqueue_downgrade): no code
    enters the queue, and gate 6 only confirms that the request's code is
    the spent one the job was queued with. Gates 1-5 are checked again
    under the lock either way.

    `progress(revision, done, total)` is told each step as it finishes;
    `on_connection(conn)` receives the working connection once the lock is
    held (and None when the work is over), so a canceller may abort it.

    Raises GateRefused (`.gate` names the gate; audited, nothing changed on
    the target), RollbackFailed (the downgrade ran and was rolled back;
    audited; `.sqlstate` set), OpsError for an unknown request or target.
    The target's catalog is re-synced after a downgrade ran.
    """
    if code is None and not accepted:
        raise OpsError("A verification code is required.")
    request = load_request(request_id)
    config = get_target(request.target.name)
    check_gates_before_lock(request, config, actor, regenerate=False)
    holder = LockHolder(user=actor.username, request_id=request.pk, since=timezone.now())
    ran = False
    with ExitStack() as stack:
        try:
            conn = stack.enter_context(execution_connection(config))
            lock = stack.enter_context(
                target_lock(config, holder=holder, wait_seconds=settings.OPS_LOCK_WAIT_SECONDS, conn=conn)
            )
        except LockBusy as exc:
            holder_text = exc.holder.describe() if getattr(exc, "holder", None) else None
            raise refuse(request, "lock", str(exc), actor, {"holder": holder_text}) from exc
        except OpsError as exc:  # e.g. the target went down, or the lock file cannot be opened
            raise refuse(request, "lock", f"The lock of target {config.name!r} cannot be taken: {exc}", actor) from exc
        try:
            request = load_request(request_id)
            preview = check_gates_before_lock(request, config, actor, regenerate=True)
            assert preview is not None
            _confirm_lock(request, lock, conn, actor)
            if accepted:
                _check_accepted_code(request, actor)
            else:
                check_code(request, code or "", actor)
            _start(request, actor, accepted=accepted)
            ran = True
            if on_connection is not None:
                on_connection(conn)
            # The lock stays held on `conn` until the result is recorded, so
            # reconcile can never find it free while this process still runs.
            return _run_downgrade(request, config, preview, actor, conn, lock, progress)
        finally:
            if on_connection is not None and ran:
                on_connection(None)
            if ran:
                stack.close()  # release the lock first: the re-sync below reads the new heads
                _resync(config.name, actor, request)


def _check_accepted_code(request: RollbackRequest, actor: Actor) -> None:
    """Gate 6 (code) for a queued downgrade: the code was checked and spent when the job was queued."""
    if request.code_used_at is None or not request.code_hash:
        raise refuse(
            request,
            "code",
            f"The code accepted for request #{request.pk} was replaced by a new one since the downgrade was "
            "queued; execute it again with the new code.",
            actor,
        )


def _confirm_lock(request: RollbackRequest, lock: HeldLock, conn: sa.Connection, actor: Actor) -> None:
    """Gate 5 (lock) once more, right before the code is spent: the lock is still held by the working connection."""
    try:
        lock.verify()
        if conn.in_transaction():
            conn.commit()
    except LockLost as exc:
        raise refuse(request, "lock", str(exc), actor) from exc


def _start(request: RollbackRequest, actor: Actor, *, accepted: bool = False) -> None:
    """Consume the code and mark the request running, in one conditional UPDATE; audit it.

    Both in one transaction: if the `started` event cannot be written the
    request stays pending with its code unspent, and nothing runs.
    """
    with transaction.atomic():
        _start_and_audit(request, actor, accepted=accepted)


def _start_and_audit(request: RollbackRequest, actor: Actor, *, accepted: bool = False) -> None:
    now = timezone.now()
    # A queued downgrade's code was spent when it was queued: keep that time.
    spent = {"code_used_at__isnull": False} if accepted else {"code_used_at__isnull": True}
    changed = RollbackRequest.objects.filter(
        pk=request.pk, status=RollbackStatus.PENDING, code_hash=request.code_hash, **spent
    ).update(
        status=RollbackStatus.RUNNING,
        code_used_at=request.code_used_at if accepted else now,
        started_at=now,
        executed_by_username=actor.username[:150],
        attempts=0,
        last_refusal_gate="",
        last_refusal_message="",
    )
    if not changed:
        raise refuse(request, "request", f"Request #{request.pk} changed while it was being checked; try again.", actor)
    request.refresh_from_db()
    append_event(
        action=AuditAction.ROLLBACK_STARTED,
        outcome=AuditOutcome.INFO,
        actor=actor,
        message=f"Downgrade of {request.target.name!r} to {request.to_revision} started; code consumed.",
        **request_context(request),
        detail={"steps": request.steps, "isolation_level": get_target(request.target.name).isolation_level},
    )


@contextmanager
def execution_connection(config: TargetConfig) -> Iterator[sa.Connection]:
    """A connection whose transactions are real database transactions, DDL included."""
    if config.is_sqlite:
        # pysqlite does not BEGIN before DDL; emit BEGIN ourselves (SQLAlchemy's
        # documented recipe) so the whole downgrade is one SQLite transaction.
        engine = create_engine(config)

        @sa.event.listens_for(engine, "connect")
        def _no_implicit_tx(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        engine = create_engine(config, isolation_level=config.isolation_level)
    try:
        try:
            conn = engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise TargetUnreachable(
                f"Target {config.name!r} is unreachable: {mask_url(str(getattr(exc, 'orig', exc) or exc)).strip()}",
                target=config.name,
            ) from exc
        try:
            if config.is_postgresql and (conn.dialect.server_version_info or (0,)) >= (14,):
                # If this process dies mid-statement, the server notices within a
                # second and rolls back instead of finishing a long statement.
                conn.exec_driver_sql("SET client_connection_check_interval = 1000")
                conn.commit()
            yield conn
        finally:
            conn.close()
    finally:
        engine.dispose()


def _downgrade(
    alembic_config: Config,
    to_revision: str,
    completed: list[str],
    progress: Callable[[str, int, int], None] | None = None,
    total: int = 0,
    on_step: Callable[[list[str], sa.Connection], None] | None = None,
) -> None:
    """`alembic.command.downgrade(alembic_config, to_revision)`, appending each finished step's revision to `completed`.

    The same work function as `command.downgrade`, run through Alembic's
    EnvironmentContext so an on_version_apply callback can be added (env.py's
    configure() resets the callbacks, so it is appended when the work runs).
    `progress(step, done, total)` reports to an operation (it may raise to
    abort); `on_step(revisions, connection)` is called after each step, inside
    the transaction (the rehearsal times and inspects each step there).
    """
    script = ScriptDirectory.from_config(alembic_config)

    def record(*, ctx: Any, step: Any, heads: set[str], run_args: Any) -> None:
        completed.extend(step.up_revision_ids)
        if progress is not None:
            # May raise (an abort asked for): the whole transaction rolls back.
            progress(", ".join(step.up_revision_ids), len(completed), total)
        if on_step is not None:
            on_step(list(step.up_revision_ids), ctx.connection)

    def downgrade_fn(rev: Any, context: Any) -> Any:
        context.on_version_apply_callbacks = (*tuple(context.on_version_apply_callbacks or ()), record)
        return script._downgrade_revs(to_revision, rev)

    with EnvironmentContext(alembic_config, script, fn=downgrade_fn, destination_rev=to_revision):
        script.run_env()


def downgrade_in_transaction(
    conn: sa.Connection,
    config: TargetConfig,
    preview: Preview,
    to_revision: str,
    completed: list[str],
    *,
    before_commit: Callable[[], None] | None = None,
    on_step: Callable[[list[str], sa.Connection], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[str]:
    """Run the planned downgrade on `conn`, inside the transaction the caller began; return the heads after it.

    The one downgrade machinery of the console, shared by the executor and the
    rehearsal (services/rehearsal): `lock_timeout` on PostgreSQL, Alembic on
    this connection with `transaction_per_migration=False`, no COMMIT or
    ROLLBACK allowed from env.py, `alembic_version` read back and compared
    with the plan's heads. `before_commit` runs last (the executor re-checks
    its lock there). Raises whatever the downgrade raised, TransactionEscape
    or HeadsMismatch; the caller rolls back.
    """
    expected = sorted(preview.expected_heads)
    txid = None
    if config.is_postgresql:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(settings.OPS_LOCK_TIMEOUT_MS)}")
        txid = conn.exec_driver_sql("SELECT txid_current()").scalar()
    with _no_foreign_transaction_end(conn):
        _downgrade(
            make_config(config, connection=conn, transaction_per_migration=False),
            to_revision,
            completed,
            progress,
            len(preview.steps),
            on_step,
        )
    if txid is not None and conn.exec_driver_sql("SELECT txid_current()").scalar() != txid:
        # Ended behind SQLAlchemy's back (e.g. on the raw DBAPI connection).
        raise TransactionEscape(f"The transaction of the downgrade was ended by someone else; {_ESCAPE_HINT}")
    context = MigrationContext.configure(conn, opts={"version_table": preview.version_table})
    heads = sorted(context.get_current_heads())
    if heads != expected:
        raise HeadsMismatch(
            f"After the downgrade alembic_version holds {heads}, not the planned {expected}; rolled back."
        )
    if before_commit is not None:
        before_commit()
    return heads


@dataclass
class FailedStep:
    """Where a downgrade failed: the revision whose step was running, the statement, its position."""

    revision: str = ""
    statement: str = ""
    number: int = 0
    of: int = 0


def failed_step(exc: BaseException, steps: list[str], completed: list[str]) -> FailedStep:
    """The step after the last completed one (none when every step finished) and the failing SQL statement."""
    remaining = [rev for rev in steps if rev not in completed]
    failed = FailedStep(of=len(steps))
    if remaining:
        failed.revision, failed.number = remaining[0], steps.index(remaining[0]) + 1
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, sa.exc.StatementError) and cause.statement:
            failed.statement = mask_url(str(cause.statement)).strip()
            break
        cause = cause.__cause__ or cause.__context__
    return failed


def _run_downgrade(
    request: RollbackRequest,
    config: TargetConfig,
    preview: Preview,
    actor: Actor,
    conn: sa.Connection,
    lock: HeldLock,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExecutionResult:
    attempts = [0]
    completed: list[str] = []  # revisions whose step finished in the current attempt

    def attempt(conn: sa.Connection) -> list[str]:
        attempts[0] += 1
        completed.clear()
        # Last statement before COMMIT: the lock is still ours on this very
        # connection, or nothing commits.
        return downgrade_in_transaction(
            conn, config, preview, request.to_revision, completed, before_commit=lock.verify, progress=progress
        )

    def on_retry(number: int, exc: BaseException) -> None:
        RollbackRequest.objects.filter(pk=request.pk).update(attempts=number)
        append_event(
            action=AuditAction.ROLLBACK_RETRIED,
            outcome=AuditOutcome.INFO,
            actor=actor,
            message=f"Attempt {number} hit a serialization failure ({sqlstate_of(exc)}); retrying.",
            detail={"attempt": number, "sqlstate": sqlstate_of(exc)},
            **request_context(request),
        )

    started = time.monotonic()
    try:
        heads = run_serializable(
            lambda: nullcontext(conn), attempt, retries=settings.OPS_SERIALIZATION_RETRIES, on_retry=on_retry
        )
    except Exception as exc:
        _record_failure(request, config, actor, exc, started, attempts[0], failed_step(exc, preview.steps, completed))
    duration_ms = int((time.monotonic() - started) * 1000)
    recorded = RollbackRequest.objects.filter(pk=request.pk, status=RollbackStatus.RUNNING).update(
        status=RollbackStatus.SUCCEEDED,
        finished_at=timezone.now(),
        duration_ms=duration_ms,
        attempts=attempts[0],
        reverted=preview.steps,
        final_heads=heads,
        error="",
        sqlstate="",
    )
    message = (
        f"Downgraded {request.target.name!r} to {request.to_revision}: reverted {len(preview.steps)} revision(s) "
        f"in {duration_ms} ms; heads now {', '.join(heads) or '(none)'}."
    )
    if not recorded:
        # Reconcile already closed the request (it can only do so once the lock
        # is free); one terminal record per request, never two that disagree.
        log.error("request %s committed but was already closed by reconcile: %s", request.pk, message)
        return ExecutionResult(request.pk, RollbackStatus.SUCCEEDED, None, message, heads)
    append_event(
        action=AuditAction.ROLLBACK_SUCCEEDED,
        outcome=AuditOutcome.SUCCESS,
        actor=actor,
        message=message,
        **request_context(request),
        detail={"reverted": preview.steps, "final_heads": heads, "duration_ms": duration_ms, "attempts": attempts[0]},
    )
    return ExecutionResult(request.pk, RollbackStatus.SUCCEEDED, None, message, heads)


def _record_failure(
    request: RollbackRequest,
    config: TargetConfig,
    actor: Actor,
    exc: Exception,
    started: float,
    attempts: int,
    failed: FailedStep,
) -> NoReturn:
    sqlstate = sqlstate_of(exc)
    cause = getattr(exc, "orig", None) or exc
    error = mask_url(f"{type(cause).__name__}: {cause}").strip()[:4000]
    heads, _ = heads_or_problem(config)
    duration_ms = int((time.monotonic() - started) * 1000)
    recorded = RollbackRequest.objects.filter(pk=request.pk, status=RollbackStatus.RUNNING).update(
        status=RollbackStatus.FAILED,
        finished_at=timezone.now(),
        duration_ms=duration_ms,
        attempts=attempts,
        error=error,
        sqlstate=sqlstate[:5],
        final_heads=heads,
        failed_revision=failed.revision[:255],
        failed_statement=failed.statement,
    )
    where = []
    if failed.revision:
        where.append(f"in revision {failed.revision} (step {failed.number} of {failed.of})")
    if failed.statement:
        statement = failed.statement if len(failed.statement) <= 1000 else failed.statement[:999] + "…"
        where.append(f"on the statement: {statement}")
    if sqlstate:
        where.append(f"with SQLSTATE {sqlstate}")
    failed_at = "The downgrade failed" + (" " + ", ".join(where) if where else "")
    unchanged = heads is not None and sorted(heads) == sorted(request.from_heads)
    if unchanged:
        message = f"{failed_at}; it was rolled back (the target is unchanged): {error}"
    else:
        found = "cannot be read" if heads is None else f"are now {heads}"
        message = (
            f"{failed_at}; the target may NOT be unchanged: its heads {found}, the plan started from "
            f"{request.from_heads}; compare it with snapshot #{request.snapshot_id} before anything else: {error}"
        )
    if recorded:
        append_event(
            action=AuditAction.ROLLBACK_FAILED,
            outcome=AuditOutcome.FAILURE,
            actor=actor,
            message=message,
            **request_context(request),
            detail={
                "sqlstate": sqlstate,
                "failed_revision": failed.revision,
                "failed_statement": failed.statement,
                "attempts": attempts,
                "heads_after": heads,
                "error": error,
            },
        )
    else:
        log.error("request %s failed but was already closed by reconcile: %s", request.pk, message)
    raise RollbackFailed(
        message,
        target=request.target.name,
        heads=heads,
        sqlstate=sqlstate,
        revision=failed.revision,
        statement=failed.statement,
    ) from exc


def _resync(name: str, actor: Actor, request: RollbackRequest) -> None:
    try:
        # The heads moved by this request: not a change "outside the console".
        catalog.sync_target(name, actor=actor, moved_by=request)
    except Exception:  # noqa: BLE001 - the result is recorded; a failed re-sync must not hide it
        log.exception("re-sync of target %s after a downgrade failed", name)
