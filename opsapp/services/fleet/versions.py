"""Read `alembic_version` of PostgreSQL targets with psycopg directly: one connection, one SELECT.

Why not SQLAlchemy here: a fresh engine initialises its dialect with several
round trips per connect, and Alembic's `get_current_heads` first asks the
catalog whether the table exists (another query). For the cron re-sync of
500 targets that is most of the work; this costs one connection and
`SELECT version_num FROM alembic_version` per target. The answer is the same
as `MigrationContext.get_current_heads()` with the default version table:
no table means no heads.

Timeouts as for every plain read of a sync: OPS_CONNECT_TIMEOUT_SECONDS for
the connection, OPS_READ_TIMEOUT_SECONDS for the statement and lock waits
(a migration holding alembic_version must not hold up the fleet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import sqlalchemy as sa
from django.conf import settings

from opsapp.services.errors import TargetUnreachable
from opsapp.targets import TargetConfig, mask_url

APPLICATION_NAME = "ops-console"


def _conninfo(target: TargetConfig) -> str:
    """The target's URL as libpq understands it (no SQLAlchemy driver suffix)."""
    url = sa.engine.make_url(target.sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def read_version_table(target: TargetConfig) -> list[str]:
    """The revisions in a PostgreSQL target's alembic_version, sorted ([] when there is no table or no row).

    Raises TargetUnreachable (password masked) when the database cannot be
    reached or the table cannot be read in time.
    """
    ms = max(1, int(settings.OPS_READ_TIMEOUT_SECONDS * 1000))
    try:
        conn = psycopg.connect(
            _conninfo(target),
            autocommit=True,
            connect_timeout=settings.OPS_CONNECT_TIMEOUT_SECONDS,
            application_name=APPLICATION_NAME,
            options=f"-c statement_timeout={ms} -c lock_timeout={ms}",
        )
    except (psycopg.Error, sa.exc.ArgumentError) as exc:
        raise TargetUnreachable(
            f"Target {target.name!r} is unreachable: {mask_url(str(exc)).strip()}", target=target.name
        ) from exc
    try:
        with conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except psycopg.errors.UndefinedTable:
        return []
    except psycopg.Error as exc:
        raise TargetUnreachable(
            f"Target {target.name!r}: cannot read alembic_version: {mask_url(str(exc)).strip()}", target=target.name
        ) from exc
    return sorted(row[0] for row in rows)


def read_many(
    targets: Iterable[TargetConfig], *, jobs: int, reader: Callable[[TargetConfig], list[str]] | None = None
) -> dict[str, list[str] | Exception]:
    """{target name: its sorted heads, or the exception its read raised}, `jobs` reads at once.

    `reader` defaults to read_version_table. No Django connection is used:
    the pool threads only talk to the targets.
    """
    read = reader or read_version_table
    targets = list(targets)

    def one(target: TargetConfig) -> list[str] | Exception:
        try:
            return read(target)
        except Exception as exc:  # noqa: BLE001 - the caller decides; one bad target never stops the others
            return exc

    if jobs <= 1 or len(targets) <= 1:
        return {target.name: one(target) for target in targets}
    with ThreadPoolExecutor(max_workers=min(jobs, len(targets)), thread_name_prefix="ops-read") as pool:
        return dict(zip((t.name for t in targets), pool.map(one, targets), strict=True))
