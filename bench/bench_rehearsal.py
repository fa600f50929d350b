"""Rehearsal figures (issue 14) on a ~1 GB target with several tables.

- rehearsal total (`run_rehearsal`: scratch database, `pg_restore --jobs N`,
  counting every table before and after, the downgrade in one transaction,
  drop) against what a careful user would do by hand: a serial `pg_restore`
  into a fresh database plus a raw `alembic downgrade` on that copy.
  Goal: ratio <= 0.8 (the parallel restore pays for the counting).
- the parallel restore alone against a serial one, same archive, same server;
  and the parallel restore with the rehearsal's session settings
  (`scratch.restore_options`) against the same serial one.

Each rehearsal is timed phase by phase (`Phases`: wrappers around the
functions `run_rehearsal` calls, never replacements) and the timeline is
logged, so the figure says where its time went.

The downgrade drops a table (`refunds`) and a column holding data
(`events.note`), so the rehearsal has real losses to measure.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

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


def restore_into(path, jobs: int, options: str = "") -> tuple[float, float]:
    """(seconds to create the empty database, seconds of pg_restore into it); `options` is PGOPTIONS."""
    import os

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
        env={**os.environ, "PGOPTIONS": options} if options else None,
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


class Phases:
    """Wall-clock phases of one `run_rehearsal`, timed by wrapping (never replacing) the functions it calls.

    Each record is (phase, start, end) in seconds from the call's start; the
    phases that overlap (e.g. a checksum run beside the restore) show as such.
    """

    # (module, attribute, phase): the names as `run.py` and its helpers look them up at call time.
    WRAPPED = (
        ("opsapp.services.rehearsal.run", "snapshot_file_problem", "snapshot checksum"),
        ("opsapp.services.rehearsal.run", "check_plan", "plan re-check"),
        ("opsapp.services.rehearsal.run", "_drop_leftovers", "leftover sweep"),
        ("opsapp.services.rehearsal.scratch", "choose_server", "choose server"),
        ("opsapp.services.rehearsal.scratch", "restore_parallel", "pg_restore"),
        ("opsapp.services.rehearsal.run", "read_current_heads", "copy heads"),
        ("opsapp.services.rehearsal.compare", "measure", "counting scans"),
        ("opsapp.services.rehearsal.compare", "schema_of", "schema capture"),
        ("opsapp.services.rehearsal.run", "downgrade_in_transaction", "downgrade"),
        ("opsapp.services.rehearsal.run", "_notify", "email"),
        ("opsapp.services.rehearsal.run", "append_event", "audit"),
    )

    def __init__(self) -> None:
        self.records: list[tuple[str, float, float]] = []
        self.origin = time.perf_counter()

    def _timed(self, phase: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.records.append((phase, start - self.origin, time.perf_counter() - self.origin))

        return wrapper

    def _scratch(self, fn: Callable) -> Callable:
        @contextmanager
        def wrapper(*args, **kwargs) -> Iterator:
            start = time.perf_counter()
            manager = fn(*args, **kwargs)
            value = manager.__enter__()
            self.records.append(("createdb", start - self.origin, time.perf_counter() - self.origin))
            try:
                yield value
            finally:
                start = time.perf_counter()
                manager.__exit__(None, None, None)
                self.records.append(("drop", start - self.origin, time.perf_counter() - self.origin))

        return wrapper

    @contextmanager
    def watching(self) -> Iterator[Phases]:
        import importlib

        saved = []
        for module_name, attribute, phase in self.WRAPPED:
            module = importlib.import_module(module_name)
            original = getattr(module, attribute, None)
            if original is None:
                continue
            saved.append((module, attribute, original))
            setattr(module, attribute, self._timed(phase, original))
        scratch = importlib.import_module("opsapp.services.rehearsal.scratch")
        for attribute in ("postgres_scratch",):
            original = getattr(scratch, attribute)
            saved.append((scratch, attribute, original))
            setattr(scratch, attribute, self._scratch(original))
        self.origin = time.perf_counter()
        try:
            yield self
        finally:
            for module, attribute, original in reversed(saved):
                setattr(module, attribute, original)

    def totals(self) -> dict[str, float]:
        """Seconds per phase (summed over its calls), in order of first start."""
        out: dict[str, float] = {}
        for phase, start, end in sorted(self.records, key=lambda r: r[1]):
            out[phase] = round(out.get(phase, 0.0) + end - start, 3)
        return out

    def end_of(self, phase: str) -> float | None:
        """Seconds from the start to the end of the last call of `phase` (None when it never ran)."""
        ends = [end for name, _start, end in self.records if name == phase]
        return max(ends) if ends else None

    def timeline(self) -> str:
        return "\n".join(
            f"      {start:7.3f} -> {end:7.3f} s  {phase}"
            for phase, start, end in sorted(self.records, key=lambda r: r[1])
        )


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    from django.conf import settings

    from opsapp.services.actors import Actor
    from opsapp.services.catalog.sync import sync_target
    from opsapp.services.rehearsal.run import run_rehearsal
    from opsapp.services.rehearsal.scratch import restore_options
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
    tuned: list[float] = []
    options = restore_options(settings.OPS_REHEARSAL_RESTORE_MEMORY_MB)
    console: list[float] = []
    to_result: list[float] = []
    phases: list[dict[str, float]] = []
    lost = {}
    for _ in range(rounds):
        created, restore_s = restore_into(path, 1)
        serial.append(restore_s)
        # By hand: createdb, serial pg_restore, alembic downgrade on the copy.
        manual.append(created + restore_s + raw_downgrade(sd, "7b0000000001"))
        parallel.append(restore_into(path, jobs)[1])
        tuned.append(restore_into(path, jobs, options)[1])
        common.drop_database(COPY_DB)
        clock = Phases()
        with clock.watching():
            start = time.perf_counter()
            rehearsal = run_rehearsal(request.pk, actor=operator)
            console.append(time.perf_counter() - start)
        to_result.append(clock.end_of("email") or console[-1])
        common.log(f"   rehearsal phases ({console[-1]:.2f} s wall):\n{clock.timeline()}")
        if rehearsal.status != "succeeded":
            raise RuntimeError(f"rehearsal failed: {rehearsal.error}")
        lost = rehearsal.destroyed
        phases.append(
            {
                "restore_s": rehearsal.restore_ms / 1000,
                "downgrade_s": rehearsal.downgrade_ms / 1000,
                "recorded_total_s": rehearsal.duration_ms / 1000,
                "wall_s": console[-1],
                "phases_s": clock.totals(),
            }
        )
    mb = size / 1e6
    total, base, result_s = common.median(console), common.median(manual), common.median(to_result)
    phase_medians = {
        name: round(common.median([p["phases_s"].get(name, 0.0) for p in phases]), 2) for name in phases[-1]["phases_s"]
    }
    yield Result(
        f"rehearsal until its result is recorded and mailed, {mb:,.0f} MB database",
        result_s,
        "s",
        base,
        result_s / base,
        "ratio <= 0.8",
        result_s / base <= 0.8,
        note="the same rehearsals as the next row, up to the end of the approvers' email (what the operator and "
        "the approver wait for; the baseline does not drop its copy either); the scratch copy is dropped after it",
        extra={"to_result_runs_s": to_result, "manual_runs_s": manual},
    )
    yield Result(
        f"rehearsal total (copy dropped), {mb:,.0f} MB database",
        total,
        "s",
        base,
        total / base,
        "ratio <= 0.8",
        total / base <= 0.8,
        note=f"run_rehearsal (plan re-check, checksum beside the restore, createdb, pg_restore --jobs {jobs} with "
        f"'{options}', counts, downgrade, schema, drop, email) vs createdb + serial pg_restore + raw alembic "
        f"downgrade on the copy, same run; {rounds} rounds, medians; phase medians (s) {phase_medians}; "
        f"measured losses {lost}",
        extra={
            "console_runs_s": console,
            "manual_runs_s": manual,
            "jobs": jobs,
            "db_bytes": size,
            "phases": phases,
            "phase_medians_s": phase_medians,
        },
    )
    p, s = common.median(parallel), common.median(serial)
    yield Result(
        f"pg_restore --jobs {jobs} vs serial, {mb:,.0f} MB archive",
        p,
        "s",
        s,
        p / s,
        note=f"same archive ({snap.size / 1e6:.0f} MB), fresh database each time, default session settings for "
        f"both; {rounds} rounds, medians",
        extra={"parallel_runs_s": parallel, "serial_runs_s": serial},
    )
    t = common.median(tuned)
    yield Result(
        f"pg_restore --jobs {jobs} as the rehearsal runs it vs serial, {mb:,.0f} MB archive",
        t,
        "s",
        s,
        t / s,
        note=f"PGOPTIONS '{options}' (scratch.restore_options) against the plain serial restore above; "
        f"{rounds} rounds, medians",
        extra={"tuned_runs_s": tuned, "serial_runs_s": serial},
    )


def cleanup() -> None:
    common.drop_database(DB)
    common.drop_database(COPY_DB)
