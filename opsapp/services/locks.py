"""The per-target operation lock, with a bounded wait and a named holder.

PostgreSQL: a session-level advisory lock on a dedicated connection to the
target, keyed by (OPS_LOCK_CLASS, crc32 of the target name). The holder is
written into that connection's `application_name`, so any other process can
name it from `pg_locks` joined with `pg_stat_activity`, and the lock dies with
the holder's connection (a killed process frees it at once).

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

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from opsapp.services.alembic_api import connect
from opsapp.services.errors import OpsError
from opsapp.targets import TargetConfig

# First key of the two-int advisory lock: a fixed namespace for this console.
OPS_LOCK_CLASS = 0x0DE5C0
_APP_PREFIX = "opsc-lock"
_POLL_SECONDS = 0.1


class LockBusy(OpsError):
    """Another operation holds the target's lock; `.holder` describes it."""


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
    database = make_url(config.sqlalchemy_url).database or ""
    return Path(f"{Path(database).resolve()}.ops-lock")


# ------------------------------------------------------------------ PostgreSQL
_HOLDER_SQL = sa.text(
    """
    SELECT a.pid, a.application_name
      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.classid = CAST(:k1 AS oid) AND l.objid = CAST(:k2 AS oid) AND l.objsubid = 2
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
     LIMIT 1
    """
)


def _pg_holder(conn: sa.Connection, key: int) -> LockHolder | None:
    row = conn.execute(_HOLDER_SQL, {"k1": OPS_LOCK_CLASS, "k2": key}).first()
    if row is None:
        return None
    return LockHolder.from_application_name(row.application_name or "", row.pid)


@contextmanager
def _pg_lock(config: TargetConfig, holder: LockHolder, wait_seconds: float) -> Iterator[LockHolder]:
    key = lock_key(config.name)
    with connect(config, isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("SELECT set_config('application_name', :n, false)"), {"n": holder.to_application_name()})
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k1, :k2)"), {"k1": OPS_LOCK_CLASS, "k2": key})
            if got.scalar():
                break
            if time.monotonic() >= deadline:
                current = _pg_holder(conn, key)
                raise _busy(config, current, wait_seconds)
            time.sleep(_POLL_SECONDS)
        try:
            yield holder
        finally:
            # Closing the connection would release it too; unlock explicitly
            # so a pooled or reused connection never keeps it.
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k1, :k2)"), {"k1": OPS_LOCK_CLASS, "k2": key})
            except sa.exc.SQLAlchemyError:
                pass


# ---------------------------------------------------------------------- SQLite
@contextmanager
def _sqlite_lock(config: TargetConfig, holder: LockHolder, wait_seconds: float) -> Iterator[LockHolder]:
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
            yield holder
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
def target_lock(config: TargetConfig, *, holder: LockHolder, wait_seconds: float) -> Iterator[LockHolder]:
    """Hold the target's operation lock for the `with` block.

    Waits at most `wait_seconds`, then raises LockBusy whose message and
    `.holder` name the current holder. Raises TargetUnreachable when a
    PostgreSQL target cannot be reached.
    """
    manager = _sqlite_lock if config.is_sqlite else _pg_lock
    with manager(config, holder, wait_seconds) as held:
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
    with connect(config, isolation_level="AUTOCOMMIT") as conn:
        return _pg_holder(conn, lock_key(config.name))
