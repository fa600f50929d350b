"""The per-target operation lock, with a bounded wait and a named holder.

PostgreSQL: a session-level advisory lock, keyed by (OPS_LOCK_CLASS, crc32 of
the target name), taken on **the connection that does the work** (the
downgrade's own connection). Losing the lock therefore loses the work too: a
terminated backend, a server-side idle timeout or a failover ends both at
once, and an uncommitted downgrade is rolled back by the server. The worker
re-checks that its own backend still holds the lock (`HeldLock.verify`) as
the last statement before COMMIT, so a lock that is gone, or that a
transaction-mode pooler left on another server connection, aborts the
transaction. `idle_session_timeout` is switched off for that one session.
The holder is written into the connection's `application_name`, so any other
process can name it from `pg_locks` joined with `pg_stat_activity`.

Liveness is decided by the lock alone: reconcile's try-lock succeeds only
when the executor's connection, and with it its transaction, is gone.

SQLite: an exclusive `fcntl.flock` on `<database file>.ops-lock`; the holder
is written into the lock file. The kernel drops the lock when the process dies.

The wait is bounded by polling the non-blocking try-lock, so a refusal comes
back after `wait_seconds` naming who holds the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from opsapp.services.db_url import parse_url
from opsapp.services.errors import OpsError, TargetUnreachable
from opsapp.targets import TargetConfig, mask_url

if TYPE_CHECKING:
    import sqlalchemy as sa

# SQLAlchemy and Alembic are imported by the functions that take a lock, not here: the cron
# reconcile jobs import this module and usually find nothing to lock (issue 18, start-up).

# First key of the two-int advisory lock: a fixed namespace for this console.
OPS_LOCK_CLASS = 0x0DE5C0
_APP_PREFIX = "opsc-lock"
_POLL_SECONDS = 0.1


class LockBusy(OpsError):
    """Another operation holds the target's lock; `.holder` describes it."""


class LockLost(OpsError):
    """The lock is no longer held by the connection doing the work; the work is rolled back."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or asks for) a target's lock."""

    user: str
    request_id: int | None = None
    since: datetime | None = None
    pid: int | None = None
    operation: str = "rollback"

    def describe(self) -> str:
        what = f"request #{self.request_id}" if self.request_id else self.operation
        when = self.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if self.since else "an unknown time"
        pid = f", process {self.pid}" if self.pid else ""
        return f"{self.user or 'an unknown user'} ({what}{pid}) since {when}"

    # PostgreSQL application_name holds at most 63 bytes: keep it compact,
    # the user last so truncation only shortens the name.
    def to_application_name(self) -> str:
        since = int((self.since or datetime.now(UTC)).timestamp())
        text = f"{_APP_PREFIX} r={self.request_id or 0} t={since} o={self.operation[:12]} u={self.user}"
        return text.encode()[:63].decode(errors="ignore")

    @classmethod
    def from_application_name(cls, text: str, pid: int | None) -> LockHolder:
        if not text.startswith(_APP_PREFIX):
            return cls(user=f"another session ({text or 'no application name'})", pid=pid, operation="unknown")
        fields = dict(part.split("=", 1) for part in text[len(_APP_PREFIX) :].split(" ", 4) if "=" in part)
        request_id = int(fields.get("r", "0") or 0) or None
        since = datetime.fromtimestamp(int(fields.get("t", "0") or 0), UTC) if fields.get("t") else None
        return cls(user=fields.get("u", ""), request_id=request_id, since=since, pid=pid, operation=fields.get("o", ""))

    def to_json(self) -> str:
        return json.dumps(
            {
                "user": self.user,
                "request_id": self.request_id,
                "since": (self.since or datetime.now(UTC)).isoformat(),
                "pid": os.getpid(),
                "operation": self.operation,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LockHolder | None:
        try:
            data = json.loads(text)
            return cls(
                user=data.get("user", ""),
                request_id=data.get("request_id"),
                since=datetime.fromisoformat(data["since"]) if data.get("since") else None,
                pid=data.get("pid"),
                operation=data.get("operation", ""),
            )
        except (ValueError, TypeError, KeyError):
            return None


def lock_key(target_name: str) -> int:
    """Second key of the advisory lock: a stable 31-bit hash of the target name."""
    return zlib.crc32(f"ops-console:{target_name}".encode()) & 0x7FFFFFFF


def sqlite_lock_path(config: TargetConfig) -> Path:
    database = parse_url(config.sqlalchemy_url).database or ""
    return Path(f"{Path(database).resolve()}.ops-lock")


# ------------------------------------------------------------------ PostgreSQL
_HOLDER_SQL = """
    SELECT a.pid, a.application_name
      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.classid = CAST(:k1 AS oid) AND l.objid = CAST(:k2 AS oid) AND l.objsubid = 2
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     LIMIT 1
    """


def _pg_holder(conn: sa.Connection, key: int) -> LockHolder | None:
    import sqlalchemy as sa

    row = conn.execute(sa.text(_HOLDER_SQL), {"k1": OPS_LOCK_CLASS, "k2": key}).first()
    if row is None:
        return None
    return LockHolder.from_application_name(row.application_name or "", row.pid)


_HELD_SQL = """
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
           AND classid = CAST(:k1 AS oid) AND objid = CAST(:k2 AS oid) AND objsubid = 2
    )
    """


class HeldLock:
    """A target lock held on one connection; `verify()` proves it is still held there.

    On PostgreSQL the lock is a session advisory lock of the connection that
    does the work, so the lock and the work die together: a terminated
    backend or an idle-session timeout ends both, never only the lock.
    `verify()` is run inside the work's transaction right before COMMIT; a
    lock that is gone (or that a transaction-mode pooler left on another
    server connection) raises LockLost, which rolls the work back.
    """

    def __init__(self, config: TargetConfig, holder: LockHolder, conn: sa.Connection | None) -> None:
        self.config, self.holder, self._conn = config, holder, conn

    def verify(self) -> None:
        if self._conn is None:  # SQLite: a kernel file lock held by this process cannot be taken away
            return
        import sqlalchemy as sa

        try:
            held = bool(
                self._conn.execute(
                    sa.text(_HELD_SQL), {"k1": OPS_LOCK_CLASS, "k2": lock_key(self.config.name)}
                ).scalar()
            )
        except sa.exc.SQLAlchemyError as exc:
            raise LockLost(
                f"The lock of target {self.config.name!r} cannot be confirmed: its connection failed "
                f"({mask_url(str(getattr(exc, 'orig', exc))).strip()}).",
                target=self.config.name,
            ) from exc
        if not held:
            raise LockLost(
                f"The lock of target {self.config.name!r} is no longer held by the connection doing the work "
                "(the target URL may go through a pooler in transaction mode; see the README, "
                "'Behind a connection pooler').",
                target=self.config.name,
            )


@contextmanager
def _pg_lock_on(
    conn: sa.Connection, config: TargetConfig, holder: LockHolder, wait_seconds: float
) -> Iterator[HeldLock]:
    import sqlalchemy as sa

    key = lock_key(config.name)
    params = {"k1": OPS_LOCK_CLASS, "k2": key}
    try:
        conn.execute(sa.text("SELECT set_config('application_name', :n, false)"), {"n": holder.to_application_name()})
        if (conn.dialect.server_version_info or (0,)) >= (14,):
            # The lock lives on this session: a server-side idle timeout must
            # not end it while the console checks the gate between statements.
            conn.exec_driver_sql("SET idle_session_timeout = 0")
        conn.commit()
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k1, :k2)"), params).scalar()
            conn.commit()  # a session lock outlives the transaction; the next one takes a fresh snapshot
            if got:
                break
            if time.monotonic() >= deadline:
                current = _pg_holder(conn, key)
                conn.commit()
                raise _busy(config, current, wait_seconds)
            time.sleep(_POLL_SECONDS)
    except sa.exc.SQLAlchemyError as exc:
        raise TargetUnreachable(
            f"Target {config.name!r}: the lock cannot be taken: {mask_url(str(getattr(exc, 'orig', exc))).strip()}",
            target=config.name,
        ) from exc
    held = HeldLock(config, holder, conn)
    try:
        # In a new transaction: behind a transaction-mode pooler this may be
        # another server connection, which does not hold the lock.
        held.verify()
        conn.commit()
        yield held
    finally:
        # Closing the connection would release it too; unlock explicitly so a
        # pooled or reused connection never keeps it.
        try:
            if conn.in_transaction():
                conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k1, :k2)"), params)
            conn.commit()
        except sa.exc.SQLAlchemyError:
            pass


# ---------------------------------------------------------------------- SQLite
@contextmanager
def _sqlite_lock(config: TargetConfig, holder: LockHolder, wait_seconds: float) -> Iterator[HeldLock]:
    path = sqlite_lock_path(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise OpsError(
            f"Target {config.name!r}: the lock file {str(path)!r} cannot be opened: {exc.strerror or exc}",
            target=config.name,
        ) from exc
    try:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _busy(config, _read_lock_file(path), wait_seconds) from None
                time.sleep(_POLL_SECONDS)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.to_json().encode(), 0)
            yield HeldLock(config, holder, None)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_lock_file(path: Path) -> LockHolder | None:
    try:
        return LockHolder.from_json(path.read_text())
    except OSError:
        return None


# ---------------------------------------------------------------------- public
def _busy(config: TargetConfig, holder: LockHolder | None, wait_seconds: float) -> LockBusy:
    who = holder.describe() if holder else "another operation (it released the lock just now or left no name)"
    return LockBusy(
        f"Target {config.name!r} is locked by {who}; gave up after waiting {wait_seconds:g} s.",
        target=config.name,
        holder=holder,
    )


@contextmanager
def target_lock(
    config: TargetConfig, *, holder: LockHolder, wait_seconds: float, conn: sa.Connection | None = None
) -> Iterator[HeldLock]:
    """Hold the target's operation lock for the `with` block.

    On PostgreSQL the lock is taken on `conn`, the connection that will do
    the work (so losing one loses the other); without `conn` it is taken on a
    connection of its own, for callers that only need to exclude others while
    they read (reconcile). Waits at most `wait_seconds`, then raises LockBusy
    whose message and `.holder` name the current holder. Raises
    TargetUnreachable when a PostgreSQL target cannot be reached.
    """
    if config.is_sqlite:
        with _sqlite_lock(config, holder, wait_seconds) as held:
            yield held
        return
    if conn is not None:
        with _pg_lock_on(conn, config, holder, wait_seconds) as held:
            yield held
        return
    from opsapp.services.alembic_api import connect

    with connect(config) as own, _pg_lock_on(own, config, holder, wait_seconds) as held:
        yield held


def current_holder(config: TargetConfig) -> LockHolder | None:
    """Who holds the target's lock right now (None when free). Takes no lock on PostgreSQL."""
    if config.is_sqlite:
        path = sqlite_lock_path(config)
        if not path.exists():
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise OpsError(
                f"Target {config.name!r}: the lock file {str(path)!r} cannot be read: {exc.strerror or exc}",
                target=config.name,
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_lock_file(path) or LockHolder(user="", operation="unknown")
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
    from opsapp.services.alembic_api import connect

    with connect(config, isolation_level="AUTOCOMMIT") as conn:
        return _pg_holder(conn, lock_key(config.name))
