"""PostgreSQL snapshots: `pg_dump --format=custom` out, `pg_restore` back in.

The tools run as argument lists (never a shell string). Connection details go
in a libpq conninfo string without the password; the password travels in the
child's `PGPASSWORD` environment variable only, so it never appears on a
command line, in `ps`, in an error or in a log.

Consistency: the heads are read inside a REPEATABLE READ transaction that also
exports its snapshot (`pg_export_snapshot()`), and `pg_dump --snapshot=<id>`
dumps exactly that snapshot while the transaction is held open. The recorded
heads therefore always match the archive, even if a migration runs mid-dump.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from django.conf import settings
from psycopg.conninfo import make_conninfo

from opsapp.services.db_url import parse_url as make_url
from opsapp.services.errors import SnapshotError
from opsapp.services.snapshots.files import create_private_file
from opsapp.services.version_table import connect_psycopg, heads_in_transaction
from opsapp.targets import TargetConfig, mask_url

if TYPE_CHECKING:
    import sqlalchemy as sa

# SQLAlchemy is imported by the functions that need it (restore, inspection): the nightly
# take_snapshot and verify_snapshots cron runs do not (issue 18, start-up).

CHUNK = 1 << 20
TOOL_TIMEOUT_SECONDS = 60
_VERSION_RE = re.compile(r"(\d+)(?:\.(\d+))?")
SYSTEM_SCHEMA_FILTER = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"


@dataclass
class DumpResult:
    size: int
    sha256: str
    heads: list[str]
    tool_version: str
    server_version: str
    heads_after: list[str] = field(default_factory=list)
    database_size: int | None = None  # when the dump began: with `size`, how well the archive compresses


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """(conninfo without password, extra child environment with PGPASSWORD) for a SQLAlchemy/libpq URL."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise SnapshotError(f"{mask_url(url)!r} is not a valid database URL.", reason="bad_url") from exc
    if not parsed.database:
        raise SnapshotError(f"{mask_url(url)!r} names no database.", reason="bad_url")
    params: dict[str, str] = {str(k): str(v) for k, v in parsed.query.items() if isinstance(v, str)}
    params.pop("password", None)
    if parsed.host:
        params["host"] = parsed.host
    if parsed.port:
        params["port"] = str(parsed.port)
    if parsed.username:
        params["user"] = parsed.username
    params["dbname"] = parsed.database
    env = {"PGCONNECT_TIMEOUT": str(settings.OPS_CONNECT_TIMEOUT_SECONDS), "PGAPPNAME": "ops-console"}
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    return make_conninfo(**params), env


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    # A URL without a password leaves libpq's own PGPASSWORD / ~/.pgpass in charge.
    env = dict(os.environ)
    env.update(extra)
    return env


def major_of(version: str) -> int:
    """15 for "pg_dump (PostgreSQL) 15.20 (Debian ...)", 9 for "9.6.1"."""
    match = _VERSION_RE.search(version.split(")", 1)[-1] if ")" in version else version)
    if not match:
        raise SnapshotError(f"Cannot read a version number from {version!r}.")
    return int(match.group(1))


def check_tool_not_older(tool_version: str, server_version_num: int, server_version: str) -> None:
    """Refuse a pg_dump whose major version is older than the server's (it cannot dump it)."""
    server_major = server_version_num // 10000
    tool_major = major_of(tool_version)
    if tool_major < server_major:
        raise SnapshotError(
            f"pg_dump {tool_version.strip()!r} is older than the server (PostgreSQL {server_version}); "
            f"install pg_dump {server_major} or newer and point OPS_PG_DUMP at it.",
            reason="pg_dump_too_old",
        )


def tool_version(binary: str, setting: str) -> str:
    """`<binary> --version`; SnapshotError naming the setting when the binary is missing or broken."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError as exc:
        raise SnapshotError(
            f"{Path(binary).name} not found: {binary!r} does not exist or is not on PATH; set {setting} to the binary.",
            reason="tool_missing",
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise SnapshotError(f"Cannot run {binary!r} ({setting}): {exc}.", reason="tool_broken") from exc
    if done.returncode != 0:
        raise SnapshotError(
            f"{binary!r} --version failed: {done.stderr.strip() or done.returncode}.", reason="tool_broken"
        )
    return done.stdout.strip()


def dump(config: TargetConfig, dest: Path, progress: Callable[[int], None] | None) -> DumpResult:
    """Dump the target into `dest` (created, must not exist), hashing while streaming.

    Raises TargetUnreachable when the target is down and SnapshotError for any
    tool problem. The caller owns `dest` and removes it on failure.
    """
    binary = settings.OPS_PG_DUMP
    version = tool_version(binary, "OPS_PG_DUMP")
    conninfo, env_extra = libpq_target(config.url)
    conn = connect_psycopg(config)
    if conn is not None:
        with conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction(), conn.cursor() as cursor:
                heads = heads_in_transaction(config, cursor)
                server_version = str(cursor.execute("SHOW server_version").fetchone()[0])
                server_num = int(cursor.execute("SHOW server_version_num").fetchone()[0])
                check_tool_not_older(version, server_num, server_version)
                database_size = int(cursor.execute("SELECT pg_database_size(current_database())").fetchone()[0] or 0)
                exported = str(cursor.execute("SELECT pg_export_snapshot()").fetchone()[0])
                # Held open until pg_dump is done: the exported snapshot lives as long as this transaction.
                size, digest = _stream_dump(
                    [binary, "--format=custom", "--no-password", f"--snapshot={exported}", f"--dbname={conninfo}"],
                    _child_env(env_extra),
                    dest,
                    progress,
                )
        return DumpResult(
            size=size,
            sha256=digest,
            heads=heads,
            tool_version=version,
            server_version=server_version,
            heads_after=heads,
            database_size=database_size,
        )
    # A URL only SQLAlchemy reads (multi-host): the same steps through its engine.
    from opsapp.services.alembic_api import connect
    from opsapp.services.catalog.sync import read_current_heads

    with connect(config) as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            heads = read_current_heads(config, conn)
            server_version = str(conn.exec_driver_sql("SHOW server_version").scalar())
            server_num = int(conn.exec_driver_sql("SHOW server_version_num").scalar())
            check_tool_not_older(version, server_num, server_version)
            database_size = int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar() or 0)
            exported = str(conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar())
            # Held open until pg_dump is done: the exported snapshot lives as long as this transaction.
            size, digest = _stream_dump(
                [binary, "--format=custom", "--no-password", f"--snapshot={exported}", f"--dbname={conninfo}"],
                _child_env(env_extra),
                dest,
                progress,
            )
    return DumpResult(
        size=size,
        sha256=digest,
        heads=heads,
        tool_version=version,
        server_version=server_version,
        heads_after=heads,
        database_size=database_size,
    )


# How often a running dump's file size is read for its progress (and a cancel noticed).
PROGRESS_POLL_SECONDS = 0.25


def _stream_dump(
    cmd: list[str], env: dict[str, str], dest: Path, progress: Callable[[int], None] | None
) -> tuple[int, str]:
    """Run pg_dump writing `dest` itself (`--file`); return the archive's size and SHA-256.

    pg_dump writes (and fsyncs) the file directly, as a plain `pg_dump --file` does: no copy of
    the archive passes through this process while the dump runs, which on a busy machine made
    the dump several percent slower than pg_dump alone. Progress is the file's size, read every
    PROGRESS_POLL_SECONDS; `progress` may raise (a cancel) and the dump is then killed. The file
    is created first, 0600 whatever the umask: pg_dump truncates it and keeps its mode. The dump
    dies with this process (PR_SET_PDEATHSIG), so a killed worker leaves no pg_dump running.
    """
    os.close(create_private_file(dest))
    with tempfile.TemporaryFile() as errfile:
        try:
            proc = subprocess.Popen(
                [*cmd, f"--file={dest}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errfile,
                env=env,
                preexec_fn=_die_with_parent if _PRCTL is not None else None,  # noqa: PLW1509 - one prctl call
            )
        except OSError as exc:
            raise SnapshotError(f"Cannot run pg_dump {cmd[0]!r}: {exc}.", reason="tool_broken") from exc
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=PROGRESS_POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if progress:
                        progress(dest.stat().st_size)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if returncode != 0:
            errfile.seek(0)
            message = mask_url(errfile.read().decode(errors="replace").strip())
            raise SnapshotError(_dump_failure(returncode, message, dest), reason="dump_failed")
    hasher = hashlib.sha256()
    size = 0
    with open(dest, "rb") as archive:
        while chunk := archive.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    if progress:
        progress(size)
    return size, hasher.hexdigest()


def _dump_failure(returncode: int, message: str, dest: Path) -> str:
    """What a failed pg_dump says, naming the snapshot directory when the file could not be written."""
    where = f"Cannot write the snapshot file in {str(dest.parent)!r}"
    if returncode == -signal.SIGXFSZ:  # the file-size limit: the kernel stops the writer
        return f"{where}: File too large (pg_dump was stopped by SIGXFSZ)."
    if "could not write to output file" in message or "could not close output file" in message:
        return f"{where}: {message}"
    return f"pg_dump failed (exit {returncode}): {message or 'no error output'}"


def list_archive(path: Path) -> str:
    """`pg_restore --list`: the archive's table of contents; SnapshotError if it does not read back."""
    binary = settings.OPS_PG_RESTORE
    try:
        done = subprocess.run(
            [binary, "--list", "--", str(path)], capture_output=True, text=True, timeout=600, check=False
        )
    except FileNotFoundError as exc:
        raise SnapshotError(
            f"pg_restore not found: {binary!r} does not exist or is not on PATH; set OPS_PG_RESTORE to the binary.",
            reason="tool_missing",
        ) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise SnapshotError(f"Cannot run pg_restore {binary!r}: {exc}.", reason="tool_broken") from exc
    if done.returncode != 0:
        raise SnapshotError(
            f"pg_restore --list cannot read the archive: {done.stderr.strip() or f'exit {done.returncode}'}",
            reason="unreadable",
        )
    return done.stdout


def check_archive(path: Path) -> None:
    """The archive reads back and holds the alembic_version data."""
    listing = list_archive(path)
    if not re.search(r"\bTABLE DATA \S+ alembic_version\b", listing):
        raise SnapshotError(
            "pg_restore --list reads the archive but it holds no alembic_version data "
            "(the target was not under Alembic when dumped).",
            reason="no_alembic_version",
        )


def _engine(url: str) -> sa.Engine:
    import sqlalchemy as sa

    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        url = f"postgresql+psycopg://{rest}"
    return sa.create_engine(
        url,
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": settings.OPS_CONNECT_TIMEOUT_SECONDS, "application_name": "ops-console"},
    )


def _open(url: str) -> tuple[sa.Engine, sa.Connection]:
    import sqlalchemy as sa

    engine = _engine(url)
    try:
        return engine, engine.connect()
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise SnapshotError(
            f"Cannot connect to {mask_url(url)}: {mask_url(str(getattr(exc, 'orig', exc))).strip()}",
            reason="unreachable",
        ) from exc


def user_tables(conn: sa.Connection) -> list[tuple[str, str]]:
    """(schema, name) of every table, view, sequence... outside the system schemas."""
    rows = conn.exec_driver_sql(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {SYSTEM_SCHEMA_FILTER} ORDER BY 1, 2"
    ).all()
    return [(r[0], r[1]) for r in rows]


def server_identity(url: str) -> tuple[str, str] | None:
    """(system_identifier, database name) of the server and database `url` reaches; None when unknown.

    `pg_control_system().system_identifier` is fixed when the cluster is
    initialised, so two URLs that spell the host differently (`localhost`,
    `127.0.0.1`, a DNS name) give the same identity for the same database.
    None when the server cannot be reached or the role may not read it.
    """
    import sqlalchemy as sa

    try:
        engine, conn = _open(url)
    except SnapshotError:
        return None
    try:
        row = conn.exec_driver_sql(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text, current_database()"
        ).one()
        conn.rollback()
    except sa.exc.DBAPIError:
        return None
    finally:
        conn.close()
        engine.dispose()
    return (str(row[0]), str(row[1])) if row[0] else None


def check_empty(url: str) -> None:
    """Refuse a database that is unreachable or already holds tables."""
    engine, conn = _open(url)
    try:
        found = user_tables(conn)
    finally:
        conn.close()
        engine.dispose()
    if found:
        names = ", ".join(f"{s}.{t}" for s, t in found[:5]) + (" ..." if len(found) > 5 else "")
        raise SnapshotError(
            f"Refusing to restore into {mask_url(url)}: it is not empty ({len(found)} relation(s): {names}). "
            "Create a new, empty database and restore into that.",
            reason="not_empty",
        )


@dataclass
class RestoreProgress:
    """How far a pg_restore is: archive bytes read of the file's size, items restored, its last action."""

    bytes_done: int
    bytes_total: int
    items: int
    action: str


# `pg_restore --verbose` announces each item it restores with one of these.
_ITEM_PREFIXES = ("creating ", "processing data for ", "executing ", "processing ")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A worker killed with SIGKILL takes its pg_restore along: its single transaction then rolls back.
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # resolved here, never in the forked child
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def restore(
    path: Path,
    url: str,
    *,
    progress: Callable[[RestoreProgress], None] | None = None,
    on_process: Callable[[Callable[[], None] | None], None] | None = None,
) -> int:
    """`pg_restore --no-owner` into `url` in one transaction (all or nothing); return the items restored.

    The archive is fed on pg_restore's stdin, so the bytes read are the
    progress and a worker that dies closes the pipe: pg_restore stops and its
    transaction rolls back. `progress` is called after each chunk and while
    pg_restore finishes (indexes, constraints); an exception it raises kills
    pg_restore and propagates. `on_process` receives a function that kills
    pg_restore (and None once it ended), for a cancel from another thread.
    """
    binary = settings.OPS_PG_RESTORE
    conninfo, env_extra = libpq_target(url)
    cmd = [binary, "--verbose", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    cmd += ["--no-password", f"--dbname={conninfo}"]
    total = path.stat().st_size
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=_child_env(env_extra),
            preexec_fn=_die_with_parent if _PRCTL is not None else None,  # noqa: PLW1509 - one prctl call
        )
    except FileNotFoundError as exc:
        raise SnapshotError(
            f"pg_restore not found: {binary!r} does not exist or is not on PATH; set OPS_PG_RESTORE to the binary.",
            reason="tool_missing",
        ) from exc
    state = {"items": 0, "action": "connecting", "errors": []}

    def read_stderr() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            text = line.removeprefix("pg_restore: ")
            if text.startswith(_ITEM_PREFIXES):
                state["items"] += 1
                state["action"] = text
            elif text and not text.startswith(("connecting to database", "implied data-only")):
                state["errors"].append(line)

    reader = threading.Thread(target=read_stderr, name="pg_restore-stderr", daemon=True)
    reader.start()
    if on_process is not None:
        on_process(proc.kill)
    done = 0

    def report() -> None:
        if progress is not None:
            progress(RestoreProgress(done, total, int(state["items"]), str(state["action"])))

    try:
        assert proc.stdin is not None
        try:
            with path.open("rb") as archive:
                while chunk := archive.read(CHUNK):
                    proc.stdin.write(chunk)
                    done += len(chunk)
                    report()
            proc.stdin.close()
        except BrokenPipeError:
            pass  # pg_restore stopped reading: an error (its exit code says) or a kill
        while True:
            try:
                returncode = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                report()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if on_process is not None:
            on_process(None)
        reader.join(timeout=10)
        with contextlib.suppress(OSError):
            proc.stdin.close()
    report()
    if returncode != 0:
        message = "; ".join(state["errors"][-5:])
        if not message and returncode < 0:
            message = f"stopped by signal {-returncode}"
        raise SnapshotError(
            f"pg_restore failed (exit {returncode}); nothing was restored: {mask_url(message) or 'no error output'}",
            reason="restore_failed",
        )
    return int(state["items"])


def inspect_restored(url: str) -> tuple[list[str], dict[str, int]]:
    """(alembic heads, {table: row count}) of a restored database."""
    from psycopg import sql

    engine, conn = _open(url)
    try:
        rows = conn.exec_driver_sql(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER} ORDER BY 1, 2"
        ).all()
        counts: dict[str, int] = {}
        raw = conn.connection.driver_connection
        for schema, table in rows:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            with raw.cursor() as cur:
                cur.execute(query)
                key = table if schema == "public" else f"{schema}.{table}"
                counts[key] = int(cur.fetchone()[0])
        has_version = any(t == "alembic_version" for _, t in rows)
        heads = (
            sorted(r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")) if has_version else []
        )
        conn.commit()
    finally:
        conn.close()
        engine.dispose()
    return heads, counts
