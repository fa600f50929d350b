"""Read a target's `alembic_version` with the bare driver: psycopg or sqlite3, no SQLAlchemy.

Why: every cron run reads `alembic_version`, and importing SQLAlchemy and
Alembic for it cost more than the rest of the command (issue 18, item 4).
What it returns is what `MigrationContext.get_current_heads()` returns on a
default-configured context (table `alembic_version` found through the
search path; no table means no heads), sorted; tests/test_version_table.py
compares the two. `read_heads` answers None for a URL only SQLAlchemy
understands (PostgreSQL multi-host forms, SQLite `file:` URIs, other
dialects); the caller then takes the SQLAlchemy path.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings

from opsapp.services.db_url import UrlError, parse_url, psycopg_connect_kwargs
from opsapp.services.errors import TargetUnreachable
from opsapp.targets import TargetConfig, mask_url

_SELECT = "SELECT version_num FROM alembic_version"


def read_heads(config: TargetConfig) -> list[str] | None:
    """The sorted revisions in `config`'s alembic_version; None when only SQLAlchemy can read this URL.

    Raises TargetUnreachable (password masked) when the database cannot be
    reached or read, with the messages of the SQLAlchemy path.
    """
    try:
        url = parse_url(config.sqlalchemy_url)
    except UrlError:
        return None
    if url.drivername == "postgresql+psycopg":
        return _postgresql_heads(config)
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        return _sqlite_heads(config, url)
    return None


def _unreachable(config: TargetConfig, exc: BaseException) -> TargetUnreachable:
    return TargetUnreachable(f"Target {config.name!r} is unreachable: {mask_url(str(exc)).strip()}", target=config.name)


def _unreadable(config: TargetConfig, exc: BaseException) -> TargetUnreachable:
    return TargetUnreachable(
        f"Target {config.name!r}: cannot read alembic_version: {mask_url(str(exc)).strip()}", target=config.name
    )


def connect_psycopg(config: TargetConfig, *, read_timeout: bool = False):
    """A psycopg connection to a PostgreSQL target with alembic_api.create_engine's connect arguments
    (which win over the URL's); None when only SQLAlchemy reads the URL. Raises TargetUnreachable."""
    import psycopg

    try:
        url = parse_url(config.sqlalchemy_url)
    except UrlError:
        return None
    kwargs = psycopg_connect_kwargs(url) if url.drivername == "postgresql+psycopg" else None
    if kwargs is None:
        return None
    kwargs.update(connect_timeout=settings.OPS_CONNECT_TIMEOUT_SECONDS, application_name="ops-console")
    if read_timeout:
        ms = max(1, int(settings.OPS_READ_TIMEOUT_SECONDS * 1000))
        kwargs["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    try:
        return psycopg.connect(**kwargs)
    except psycopg.Error as exc:
        raise _unreachable(config, exc) from exc


def heads_in_transaction(config: TargetConfig, cursor) -> list[str]:
    """alembic_version's revisions read on `cursor` (psycopg) without leaving its transaction aborted."""
    import psycopg

    try:
        if cursor.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()[0]:
            return sorted(row[0] for row in cursor.execute(_SELECT).fetchall())
        return []
    except psycopg.Error as exc:
        raise _unreadable(config, exc) from exc


def _postgresql_heads(config: TargetConfig) -> list[str] | None:
    conn = connect_psycopg(config, read_timeout=True)
    if conn is None:
        return None
    try:
        with conn.cursor() as cursor:
            return heads_in_transaction(config, cursor)
    finally:
        conn.close()


def _sqlite_heads(config: TargetConfig, url) -> list[str] | None:
    import sqlite3

    database = url.database or ""
    if url.query or not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(os.path.abspath(database))
    if not path.exists():
        # SQLite would create an empty file there: a typo in the URL must not look like an empty target.
        raise TargetUnreachable(
            f"Target {config.name!r} is unreachable: SQLite file {str(Path(database))!r} does not exist.",
            target=config.name,
        )
    try:
        conn = sqlite3.connect(path)
    except sqlite3.Error as exc:
        raise _unreachable(config, exc) from exc
    try:
        try:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = 'alembic_version'"
            ).fetchone()
            if exists is None:
                return []
            return sorted(row[0] for row in conn.execute(_SELECT).fetchall())
        except sqlite3.Error as exc:
            raise _unreadable(config, exc) from exc
    finally:
        conn.close()
