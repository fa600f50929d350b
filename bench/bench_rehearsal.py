"""Rehearsal figures (issue 14) on a ~1 GB target with several tables.

- rehearsal total (`run_rehearsal`: scratch database, `pg_restore --jobs N`,
  counting every table before and after, the downgrade in one transaction,
  drop) against what a careful user would do by hand: a serial `pg_restore`
  into a fresh database plus a raw `alembic downgrade` on that copy.
  Goal: ratio <= 0.8 (the parallel restore pays for the counting).
- the parallel restore alone against a serial one, same archive, same server.

The downgrade drops a table (`refunds`) and a column holding data
(`events.note`), so the rehearsal has real losses to measure.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable

import common
from common import Result

from opsapp.demo.history_gen import ScriptDir

DB = common.bench_db("reh")
TARGET = "bench_reh"
COPY_DB = common.bench_db("reh_copy")


def build_database(size_mb: int) -> tuple[ScriptDir, int]:
    import psycopg
    from alembic import command
    from alembic.config import Config

    url = common.recreate_database(DB)
    sd = ScriptDir(common.fresh_dir("reh_scripts"), url.replace("postgresql://", "postgresql+psycopg://"))
    sd.add("7b0000000001", None, message="baseline (tables built out of band)")
    sd.add(
        "7b0000000002",
        "7b0000000001",
        message="add events.note",
        upgrade="op.add_column('events', sa.Column('note', sa.Text))",
        downgrade="op.drop_column('events', 'note')",
    )
    sd.add(
        "7b0000000003",
        "7b0000000002",
        message="create refunds",
        upgrade="op.execute('CREATE TABLE refunds AS SELECT id, amount_cents FROM events WHERE id % 50 = 0')",
        downgrade="op.drop_table('refunds')",
    )
    rows = int(size_mb * 1024 * 1024 / 200)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(
            "CREATE TABLE accounts AS SELECT g AS id, 'user' || g || '@example.test' AS email, "
            f"md5(g::text) AS api_key FROM generate_series(1, {max(1000, rows // 10)}) g"
        )
        conn.execute("ALTER TABLE accounts ADD PRIMARY KEY (id)")
        conn.execute(
            "CREATE TABLE events AS SELECT g AS id, (g % 100000) + 1 AS account_id, "
            "(g * 37) % 100000 AS amount_cents, md5(g::text) || md5((g * 7)::text) AS payload "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute("ALTER TABLE events ADD PRIMARY KEY (id)")
        conn.execute("CREATE INDEX events_account ON events (account_id)")
        conn.execute(
            "CREATE TABLE payments AS SELECT g AS id, (g % 1000) + 1 AS account_id, g * 3 AS cents "
            f"FROM generate_series(1, {max(1000, rows // 4)}) g"
        )
        conn.execute("ALTER TABLE payments ADD PRIMARY KEY (id)")
    command.upgrade(Config(str(sd.ini)), "head")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE events SET note = 'n' || id WHERE id % 3 = 0")
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return sd, size


def restore_into(path, jobs: int) -> tuple[float, float]:
    """(seconds to create the empty database, seconds of pg_restore into it)."""
    common.drop_database(COPY_DB)
    start = time.perf_counter()
    url = common.recreate_database(COPY_DB)
    created = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run(
        [
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--jobs={jobs}",
            f"--dbname={url}",
            str(path),
        ],
        check=True,
    )
    return created, time.perf_counter() - start


def raw_downgrade(sd: ScriptDir, to: str) -> float:
    from alembic import command
    from alembic.config import Config

    config = Config(str(sd.ini))
    config.set_main_option("sqlalchemy.url", common.database_url(COPY_DB, "postgresql+psycopg"))
    start = time.perf_counter()
    command.downgrade(config, to)
    return time.perf_counter() - start


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    from django.conf import settings

    from opsapp.services.actors import Actor
    from opsapp.services.catalog.sync import sync_target
    from opsapp.services.rehearsal.run import run_rehearsal
    from opsapp.services.rollback import requests as rollback
    from opsapp.services.snapshots.lifecycle import snapshot_path, take_snapshot

    sd, size = build_database(sizes.get("rehearsal_mb", 1024))
    common.log(f"   built a {size / 1e6:.0f} MB database")
    users = common.ensure_users()
    operator = Actor.from_user(users["operator"])
    sync_target(TARGET, actor=operator)
    snap = take_snapshot(TARGET, actor=operator)
    request = rollback.create_request(
        target_name=TARGET, to="7b0000000001", reason="benchmark", actor=operator, snapshot_id=snap.pk
    )
    path = snapshot_path(snap)
    jobs = settings.OPS_REHEARSAL_RESTORE_JOBS
    rounds = sizes.get("rehearsal_runs", 2)
    manual: list[float] = []
    serial: list[float] = []
    parallel: list[float] = []
    console: list[float] = []
    phases: list[dict[str, float]] = []
    lost = {}
    for _ in range(rounds):
        created, restore_s = restore_into(path, 1)
        serial.append(restore_s)
        # By hand: createdb, serial pg_restore, alembic downgrade on the copy.
        manual.append(created + restore_s + raw_downgrade(sd, "7b0000000001"))
        parallel.append(restore_into(path, jobs)[1])
        start = time.perf_counter()
        rehearsal = run_rehearsal(request.pk, actor=operator)
        console.append(time.perf_counter() - start)
        if rehearsal.status != "succeeded":
            raise RuntimeError(f"rehearsal failed: {rehearsal.error}")
        lost = rehearsal.destroyed
        phases.append(
            {
                "restore_s": rehearsal.restore_ms / 1000,
                "downgrade_s": rehearsal.downgrade_ms / 1000,
                "recorded_total_s": rehearsal.duration_ms / 1000,
                "wall_s": console[-1],
            }
        )
    mb = size / 1e6
    total, base = common.median(console), common.median(manual)
    yield Result(
        f"rehearsal total, {mb:,.0f} MB database",
        total,
        "s",
        base,
        total / base,
        "ratio <= 0.8",
        total / base <= 0.8,
        note=f"run_rehearsal (plan re-check, createdb, pg_restore --jobs {jobs}, counts before/after, downgrade, "
        f"drop, email) vs createdb + serial pg_restore + raw alembic downgrade on the copy; {rounds} rounds, "
        f"medians; measured losses {lost}",
        extra={"console_runs_s": console, "manual_runs_s": manual, "jobs": jobs, "db_bytes": size, "phases": phases},
    )
    p, s = common.median(parallel), common.median(serial)
    yield Result(
        f"pg_restore --jobs {jobs} vs serial, {mb:,.0f} MB archive",
        p,
        "s",
        s,
        p / s,
        note=f"same archive ({snap.size / 1e6:.0f} MB), fresh database each time; {rounds} rounds, medians",
        extra={"parallel_runs_s": parallel, "serial_runs_s": serial},
    )


def cleanup() -> None:
    common.drop_database(DB)
    common.drop_database(COPY_DB)
