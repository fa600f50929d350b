"""SQLite snapshots: the online backup API out, a copy back in.

`sqlite3.Connection.backup` copies every page in one step under a read lock,
so the copy is a consistent database even while the target is being written.
The copy is then flushed and hashed (the backup API writes pages itself, so
there is no stream to hash on the way).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from opsapp.services.db_url import parse_url as make_url
from opsapp.services.errors import SnapshotError
from opsapp.services.snapshots.files import create_private_file, fsync_dir, fsync_file, sha256_file
from opsapp.services.snapshots.postgres import DumpResult
from opsapp.targets import TargetConfig, mask_url


def database_path(url: str) -> Path:
    try:
        database = make_url(url).database
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise SnapshotError(f"{mask_url(url)!r} is not a valid SQLite URL.", reason="bad_url") from exc
    if not database or database == ":memory:":
        raise SnapshotError(f"{mask_url(url)!r} names no SQLite database file.", reason="bad_url")
    return Path(database)


def _readonly(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True)


def _heads(config: TargetConfig) -> list[str]:
    from opsapp.services.catalog.sync import read_current_heads

    return read_current_heads(config)


def dump(config: TargetConfig, dest: Path, progress: Callable[[int], None] | None) -> DumpResult:
    """Back the target up into `dest` (must not exist); heads read before and after."""
    source = database_path(config.url)
    if not source.is_file():
        raise SnapshotError(f"Target {config.name!r} is unreachable: SQLite file {str(source)!r} does not exist.")
    heads = _heads(config)
    database_size = source.stat().st_size
    if dest.exists():
        raise SnapshotError(f"Refusing to overwrite {str(dest)!r}.")
    # Created empty and private first (an empty file is an empty SQLite database):
    # sqlite3 would create it 0644 under the usual umask, and its journal copies the mode.
    os.close(create_private_file(dest))
    try:
        src = _readonly(source)
        try:
            dst = sqlite3.connect(dest)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise SnapshotError(f"SQLite backup of target {config.name!r} failed: {exc}.", reason="dump_failed") from exc
    fsync_file(dest)
    size = dest.stat().st_size
    digest = sha256_file(dest)
    if progress:
        progress(size)
    heads_after = _heads(config)
    version = f"sqlite3 {sqlite3.sqlite_version}"
    return DumpResult(
        size=size,
        sha256=digest,
        heads=heads,
        tool_version=version,
        server_version=version,
        heads_after=heads_after,
        database_size=database_size,
    )


def check_file(path: Path) -> None:
    """PRAGMA integrity_check passes and an alembic_version table is present."""
    try:
        conn = _readonly(path, immutable=True)
        try:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            has_version = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise SnapshotError(f"The SQLite copy does not open: {exc}.", reason="unreadable") from exc
    if result != ["ok"]:
        raise SnapshotError(f"PRAGMA integrity_check failed: {'; '.join(result[:5])}", reason="unreadable")
    if not has_version:
        raise SnapshotError("The SQLite copy holds no alembic_version table.", reason="no_alembic_version")


def restore(path: Path, url: str) -> Path:
    """Copy the snapshot into a new SQLite file named by `url` (refused when it exists and is not empty)."""
    dest = database_path(url)
    if dest.exists() and (not dest.is_file() or dest.stat().st_size > 0):
        raise SnapshotError(
            f"Refusing to restore into {str(dest)!r}: the file already exists and is not empty. "
            "Name a new file and restore into that.",
            reason="not_empty",
        )
    if not dest.parent.is_dir():
        raise SnapshotError(f"Cannot restore into {str(dest)!r}: directory {str(dest.parent)!r} does not exist.")
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        src = _readonly(path, immutable=True)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        fsync_file(partial)
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    except (sqlite3.Error, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise SnapshotError(f"SQLite restore into {str(dest)!r} failed: {exc}.", reason="restore_failed") from exc
    return dest


def inspect_restored(url: str) -> tuple[list[str], dict[str, int]]:
    """(alembic heads, {table: row count}) of a restored SQLite file."""
    conn = _readonly(database_path(url))
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
        counts = {
            t: int(conn.execute(f'SELECT count(*) FROM "{t.replace(chr(34), chr(34) * 2)}"').fetchone()[0])
            for t in tables
        }
        heads = (
            sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))
            if "alembic_version" in tables
            else []
        )
    finally:
        conn.close()
    return heads, counts
