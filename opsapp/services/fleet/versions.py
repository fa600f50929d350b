"""Read `alembic_version` of many targets at once: `jobs` reads in a thread pool.

Each read is `catalog.sync.read_current_heads`, which uses the bare driver
(`services/version_table.py`: one psycopg connection and one SELECT per
PostgreSQL target, no SQLAlchemy engine, no dialect round trips) and the
timeouts of every plain read of a sync: OPS_CONNECT_TIMEOUT_SECONDS for the
connection, OPS_READ_TIMEOUT_SECONDS for the statement and lock waits, so a
migration holding alembic_version does not hold up the fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from opsapp.targets import TargetConfig


def read_many(
    targets: Iterable[TargetConfig], *, jobs: int, reader: Callable[[TargetConfig], list[str]]
) -> dict[str, list[str] | Exception]:
    """{target name: its sorted heads, or the exception its read raised}, `jobs` reads at once.

    No Django connection is used: the pool threads only talk to the targets.
    """
    targets = list(targets)

    def one(target: TargetConfig) -> list[str] | Exception:
        try:
            return reader(target)
        except Exception as exc:  # noqa: BLE001 - the caller decides; one bad target never stops the others
            return exc

    if jobs <= 1 or len(targets) <= 1:
        return {target.name: one(target) for target in targets}
    with ThreadPoolExecutor(max_workers=min(jobs, len(targets)), thread_name_prefix="ops-read") as pool:
        return dict(zip((t.name for t in targets), pool.map(one, targets), strict=True))
