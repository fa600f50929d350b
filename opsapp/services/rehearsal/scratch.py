"""Scratch copies for rehearsals: where they live, how they are made, and how leftovers go.

PostgreSQL: a database named `ops_rehearsal_r<request>_<hex>` on the server
of `OPS_REHEARSAL_URL`, else on the target's own server when the console's
role may create databases there; otherwise RehearsalUnavailable. It is filled
with `pg_restore --jobs N` from the snapshot's custom-format file.
SQLite: a copy of the snapshot file in a private directory with the same
prefix under OPS_VAR_DIR.

Liveness comes from a lock, never from time: while a rehearsal runs, its
process holds a session advisory lock named after the scratch database on its
admin connection (a lock file for SQLite). `reconcile` drops every
prefixed scratch copy whose lock it can take, so a killed worker leaves
nothing behind once reconcile has run. The production target is never
connected to for writing: on the target's server only CREATE/DROP DATABASE
of the scratch copy are sent, and those do not touch the target database.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from django.conf import settings
from sqlalchemy.engine import make_url

from opsapp.services.errors import OpsError
from opsapp.services.snapshots.postgres import _child_env, _engine, libpq_target
from opsapp.targets import TargetConfig, configured_names, get_target, mask_url

PREFIX = "ops_rehearsal_"
NAME_RE = re.compile(r"^ops_rehearsal_r\d+_[0-9a-f]{8}$")
# First key of the two-int advisory lock a live rehearsal holds on its scratch name.
LOCK_CLASS = 0x0E4EA25
SERVER_REHEARSAL_URL = "OPS_REHEARSAL_URL"
SERVER_TARGET = "target server"
SERVER_FILE = "file copy"


class RehearsalUnavailable(OpsError):
    """No server is available to hold a scratch copy of this target."""


@dataclass
class Server:
    """A PostgreSQL server the console may create databases on: a URL to connect to for CREATE/DROP DATABASE."""

    label: str
    admin_url: str

    def url_of(self, database: str) -> str:
        return make_url(_sa_url(self.admin_url)).set(database=database).render_as_string(hide_password=False)


@dataclass
class Scratch:
    """A live scratch copy: `url` reaches it; `name` is its database (or directory) name."""

    name: str
    url: str
    server_label: str


def scratch_name(request_id: int) -> str:
    return f"{PREFIX}r{int(request_id)}_{secrets.token_hex(4)}"


def _sa_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if scheme in ("postgres", "postgresql") else url


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - (1 << 31)


def _may_create_databases(url: str) -> bool:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.exec_driver_sql(
                    "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
                ).scalar()
            )
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def _maintenance_url(target_url: str) -> str:
    """The server's `postgres` database when the role may connect to it, else the target's own database.

    CREATE/DROP DATABASE and the scratch copies' liveness locks then live
    outside the target database; the choice is the same in every process,
    so reconcile finds the locks where the rehearsals take them.
    """
    candidate = make_url(_sa_url(target_url)).set(database="postgres").render_as_string(hide_password=False)
    engine = _engine(candidate)
    try:
        with engine.connect():
            return candidate
    except sa.exc.SQLAlchemyError:
        return target_url
    finally:
        engine.dispose()


def choose_server(config: TargetConfig) -> Server:
    """OPS_REHEARSAL_URL, else the target's own server when its role may CREATEDB; else RehearsalUnavailable."""
    if settings.OPS_REHEARSAL_URL:
        return Server(SERVER_REHEARSAL_URL, settings.OPS_REHEARSAL_URL)
    if _may_create_databases(config.url):
        return Server(SERVER_TARGET, _maintenance_url(config.url))
    raise RehearsalUnavailable(
        f"Rehearsal is unavailable for target {config.name!r}: OPS_REHEARSAL_URL is not set and the console's role "
        f"on the target's server ({mask_url(config.url)}) may not create databases. Set OPS_REHEARSAL_URL to a "
        "PostgreSQL server where the console may create and drop databases.",
        target=config.name,
        reason="unavailable",
    )


def _autocommit(url: str) -> tuple[sa.Engine, sa.Connection]:
    engine = _engine(url)
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise RehearsalUnavailable(
            f"Cannot connect to the rehearsal server {mask_url(url)}: "
            f"{mask_url(str(getattr(exc, 'orig', exc))).strip()}",
            reason="unreachable",
        ) from exc
    return engine, conn


def _quoted(name: str) -> str:
    if not NAME_RE.match(name):  # never interpolate anything but our own names
        raise OpsError(f"{name!r} is not a rehearsal scratch name.")
    return f'"{name}"'


@contextmanager
def postgres_scratch(server: Server, request_id: int) -> Iterator[Scratch]:
    """Create an empty scratch database on `server`, hold its liveness lock, and always drop it afterwards."""
    name = scratch_name(request_id)
    engine, admin = _autocommit(server.admin_url)
    try:
        admin.exec_driver_sql("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, _lock_key(name)))
        try:
            admin.exec_driver_sql(f"CREATE DATABASE {_quoted(name)} TEMPLATE template0")
        except sa.exc.DBAPIError as exc:
            raise RehearsalUnavailable(
                f"Cannot create the scratch database on the rehearsal server ({server.label}): "
                f"{mask_url(str(getattr(exc, 'orig', exc))).strip()}",
                reason="createdb_failed",
            ) from exc
        try:
            yield Scratch(name, server.url_of(name), server.label)
        finally:
            admin.exec_driver_sql(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")
    finally:
        admin.close()  # ends the session: its advisory lock goes with it
        engine.dispose()


def restore_options(memory_mb: int) -> str:
    """PGOPTIONS of the restore sessions: settings a throwaway copy can afford, none that changes its contents.

    - synchronous_commit=off: a commit does not wait for its WAL flush. A
      crash may lose the last commits of the copy, which is then dropped and
      restored again anyway (the copy is never kept).
    - maintenance_work_mem: index and constraint builds sort in memory instead
      of spilling to temporary files (`memory_mb` per job).
    Both are session settings any role may set; the server's own
    configuration and every other database are left alone.
    """
    return f"-c synchronous_commit=off -c maintenance_work_mem={int(memory_mb)}MB"


def restore_parallel(path: Path, url: str, jobs: int) -> None:
    """`pg_restore --jobs N` into the empty scratch database `url` (no --single-transaction: it excludes --jobs).

    Its sessions run with `restore_options` (OPS_REHEARSAL_RESTORE_MEMORY_MB).
    A failed restore leaves a partial copy, which the caller drops.
    """
    binary = settings.OPS_PG_RESTORE
    conninfo, env_extra = libpq_target(url)
    env_extra["PGOPTIONS"] = restore_options(settings.OPS_REHEARSAL_RESTORE_MEMORY_MB)
    cmd = [binary, "--no-owner", "--no-privileges", "--exit-on-error", "--no-password", f"--jobs={max(1, jobs)}"]
    cmd += [f"--dbname={conninfo}", "--", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(env_extra), check=False)
    except FileNotFoundError as exc:
        raise OpsError(
            f"pg_restore not found: {binary!r}; set OPS_PG_RESTORE to the binary.", reason="tool_missing"
        ) from exc
    if done.returncode != 0:
        raise OpsError(
            f"pg_restore into the scratch copy failed (exit {done.returncode}): {mask_url(done.stderr.strip())}",
            reason="restore_failed",
        )


# ------------------------------------------------------------------ SQLite
def _sqlite_root() -> Path:
    return Path(settings.VAR_DIR) / "rehearsals"


@contextmanager
def sqlite_scratch(snapshot_file: Path, request_id: int) -> Iterator[Scratch]:
    """Copy the snapshot file into a private prefixed directory under its held lock file; always remove both.

    The lock file is created and locked before the directory exists, so a
    directory without a held lock always belongs to a dead process.
    """
    root = _sqlite_root()
    root.mkdir(parents=True, exist_ok=True)
    name = scratch_name(request_id)
    lock_path = root / f"{name}.lock"
    lock_fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    directory = root / name
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        directory.mkdir(mode=0o700)
        copy = directory / "copy.sqlite3"
        shutil.copyfile(snapshot_file, copy)
        os.chmod(copy, 0o600)
        yield Scratch(name, f"sqlite:///{copy}", SERVER_FILE)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        lock_path.unlink(missing_ok=True)
        os.close(lock_fd)


# ------------------------------------------------------------------ reconcile
def known_servers() -> list[Server]:
    """The servers scratch copies may be on: OPS_REHEARSAL_URL, else each PostgreSQL target's server."""
    if settings.OPS_REHEARSAL_URL:
        return [Server(SERVER_REHEARSAL_URL, settings.OPS_REHEARSAL_URL)]
    servers: list[Server] = []
    for name in configured_names():
        try:
            config = get_target(name)
        except OpsError:
            continue
        if config.is_postgresql:
            servers.append(Server(SERVER_TARGET, _maintenance_url(config.url)))
    return servers


def drop_leftovers(servers: list[Server] | None = None) -> list[str]:
    """Drop every prefixed scratch copy whose owner is gone (its lock is free); return their names.

    `servers` defaults to every known server (and the SQLite copies). A copy
    still locked belongs to a running rehearsal and is left alone.
    Unreachable servers are skipped.
    """
    dropped: list[str] = []
    for server in known_servers() if servers is None else servers:
        try:
            engine, admin = _autocommit(server.admin_url)
        except RehearsalUnavailable:
            continue
        try:
            names = [
                row[0]
                for row in admin.exec_driver_sql(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'ops\\_rehearsal\\_%%' ORDER BY 1"
                )
            ]
            for name in names:
                if not NAME_RE.match(name) or name in dropped:
                    continue
                key = (LOCK_CLASS, _lock_key(name))
                if not admin.exec_driver_sql("SELECT pg_try_advisory_lock(%s, %s)", key).scalar():
                    continue
                try:
                    admin.exec_driver_sql(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")
                    dropped.append(name)
                finally:
                    admin.exec_driver_sql("SELECT pg_advisory_unlock(%s, %s)", key)
        finally:
            admin.close()
            engine.dispose()
    for directory in _sqlite_dirs():
        lock_path = directory.with_name(f"{directory.name}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            fd = None  # the owner removes its lock file only after its directory: it is gone
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: a live rehearsal
        else:
            shutil.rmtree(directory, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            dropped.append(directory.name)
        finally:
            if fd is not None:
                os.close(fd)
    return dropped


def _sqlite_dirs() -> list[Path]:
    root = _sqlite_root()
    return sorted(d for d in root.glob(f"{PREFIX}*") if d.is_dir()) if root.is_dir() else []


def _sqlite_dir_held(directory: Path) -> bool:
    try:
        fd = os.open(directory.with_name(f"{directory.name}.lock"), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def live_names() -> set[str] | None:
    """Names of scratch copies on reachable servers whose lock is held (their rehearsal still runs)."""
    live: set[str] = set()
    for server in known_servers():
        try:
            engine, admin = _autocommit(server.admin_url)
        except RehearsalUnavailable:
            return None
        try:
            rows = admin.exec_driver_sql(
                "SELECT d.datname FROM pg_database d WHERE d.datname LIKE 'ops\\_rehearsal\\_%%'"
            ).all()
            held = {
                int(r[0])
                for r in admin.exec_driver_sql(
                    "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted",
                    (LOCK_CLASS,),
                )
            }
            # pg_locks shows the keys as oids (unsigned): compare modulo 2**32.
            live |= {r[0] for r in rows if (_lock_key(r[0]) % (1 << 32)) in held}
        finally:
            admin.close()
            engine.dispose()
    live |= {d.name for d in _sqlite_dirs() if _sqlite_dir_held(d)}
    return live
