"""The liveness lock: held by the worker process for as long as it runs one operation.

Like the target lock (services/locks.py), liveness is decided by a lock that
the operating system or the database drops when the process dies, never by
time: a worker killed with SIGKILL loses it at once, a slow worker keeps it.

PostgreSQL console database: a session advisory lock keyed by the operation
id, on a connection of its own, so workers on several hosts are seen alike.
A worker process opens that connection once (`session()`, around its loop)
and takes and releases each job's lock on it: a connection per job would
cost the server a new backend process per job. Without a session (a job run
in-process, e.g. by a test) each job opens its own connection.
SQLite console database (one host): an exclusive `flock` on
`<database>.op-<id>.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper

OPERATION_LOCK_CLASS = 0x0DE5C1


def _key(operation_id: int) -> int:
    return (OPERATION_LOCK_CLASS << 40) | int(operation_id)


def _sqlite_path(operation_id: int) -> Path:
    name = str(connections["default"].settings_dict["NAME"])
    return Path(f"{Path(name).resolve()}.op-{operation_id}.lock")


def _is_postgresql() -> bool:
    return connections["default"].vendor == "postgresql"


class _Session(threading.local):
    wrapper: BaseDatabaseWrapper | None = None


_session = _Session()


@contextmanager
def session() -> Iterator[None]:
    """Keep one liveness connection for every job this thread runs inside the block (a worker's loop)."""
    if not _is_postgresql() or _session.wrapper is not None:
        yield
        return
    _session.wrapper = connections.create_connection("default")
    try:
        yield
    finally:
        wrapper, _session.wrapper = _session.wrapper, None
        wrapper.close()


def _execute(wrapper: BaseDatabaseWrapper, sql: str, key: int) -> object:
    wrapper.ensure_connection()
    wrapper.set_autocommit(True)
    with wrapper.cursor() as cur:
        cur.execute(sql, [key])
        return cur.fetchone()[0]


@contextmanager
def hold(operation_id: int) -> Iterator[None]:
    """Hold operation `operation_id`'s liveness lock for the block (a connection or file of its own)."""
    if _is_postgresql():
        shared = _session.wrapper
        if shared is None:
            yield from _hold_on_private_connection(operation_id)
            return
        key = _key(operation_id)
        try:
            _execute(shared, "SELECT pg_advisory_lock(%s)", key)
        except DatabaseError:
            shared.close()  # a connection the server dropped since the last job: one new attempt
            _execute(shared, "SELECT pg_advisory_lock(%s)", key)
        try:
            yield
        finally:
            try:
                released = _execute(shared, "SELECT pg_advisory_unlock(%s)", key)
            except DatabaseError:
                released = False
            if not released:
                shared.close()  # ending the session is what surely releases the lock
        return
    path = _sqlite_path(operation_id)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _hold_on_private_connection(operation_id: int) -> Iterator[None]:
    wrapper = connections.create_connection("default")
    try:
        _execute(wrapper, "SELECT pg_advisory_lock(%s)", _key(operation_id))
        yield
    finally:
        wrapper.close()  # closing the session releases the lock


def worker_alive(operation_id: int) -> bool:
    """True while some process still holds the operation's liveness lock."""
    if _is_postgresql():
        with connections["default"].cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", [_key(operation_id)])
            got = cur.fetchone()[0]
            if got:
                cur.execute("SELECT pg_advisory_unlock(%s)", [_key(operation_id)])
        return not got
    path = _sqlite_path(operation_id)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            path.unlink()
        return False
    finally:
        os.close(fd)
