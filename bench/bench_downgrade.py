"""Downgrade figure: the guarded execute_request against Alembic's command.downgrade.

A generated linear history of N revisions on PostgreSQL: the first creates
`items` with rows, each later one adds a column filled through a server default. Both sides
revert the same steps (head down to the first revision). The console side is
timed around `execute_request` only (gate, lock, audit, Alembic, post-check,
re-sync); request, code and snapshot are prepared before the clock starts,
as an operator would have done them beforehand.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

import common
from common import Result

from opsapp.demo.history_gen import ScriptDir

DB = common.bench_db("down")
TARGET = "bench_down"
ROWS = 20_000


def rev_id(i: int) -> str:
    return f"d0{i:010d}"


def build_history(n: int) -> ScriptDir:
    url = common.recreate_database(DB)
    sd = ScriptDir(common.fresh_dir("down_scripts"), url.replace("postgresql://", "postgresql+psycopg://"))
    sd.add(
        rev_id(1),
        None,
        message="create items",
        upgrade="op.create_table('items', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.String(50))); "
        f"op.execute(\"INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g\")",
        downgrade="op.drop_table('items')",
    )
    for i in range(2, n + 1):
        col = f"c{i:03d}"
        sd.add(
            rev_id(i),
            rev_id(i - 1),
            message=f"add items {col}",
            # A server default fills every row without rewriting the table (PostgreSQL 11+).
            upgrade=f"op.add_column('items', sa.Column('{col}', sa.Integer, server_default='{i}'))",
            downgrade=f"op.drop_column('items', '{col}')",
        )
    return sd


def alembic_config(sd: ScriptDir):
    from alembic.config import Config

    return Config(str(sd.ini))


def upgrade_head(sd: ScriptDir) -> None:
    from alembic import command

    command.upgrade(alembic_config(sd), "head")


def _latest_code(request_id: int) -> str:
    from django.core import mail

    for message in reversed(getattr(mail, "outbox", [])):
        found = re.search(r"Code:\s*([0-9A-Za-z-]+)", message.body)
        if found:
            return found.group(1)
    raise RuntimeError(f"no verification code was sent for request #{request_id}")


def console_run(sd: ScriptDir, to: str, users: dict, profiler=None) -> tuple[float, object]:
    from django.core import mail

    from opsapp.services.actors import Actor
    from opsapp.services.catalog.sync import sync_target
    from opsapp.services.rollback import requests as rollback
    from opsapp.services.snapshots.lifecycle import take_snapshot

    upgrade_head(sd)
    operator = Actor.from_user(users["operator"])
    sync_target(TARGET, actor=operator)
    snap = take_snapshot(TARGET, actor=operator)
    mail.outbox = []
    request = rollback.create_request(
        target_name=TARGET, to=to, reason="benchmark", actor=operator, snapshot_id=snap.pk
    )
    code = _latest_code(request.pk)
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter()
    result = rollback.execute_request(request.pk, code=code, actor=operator)
    elapsed = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    if result.status != "succeeded" or result.heads != [to]:
        raise RuntimeError(f"execute_request did not reach {to}: {result}")
    return elapsed, result


def alembic_run(sd: ScriptDir, to: str) -> float:
    """What a user would run: `alembic downgrade <rev>` through the Python API."""
    from alembic import command

    upgrade_head(sd)
    config = alembic_config(sd)
    start = time.perf_counter()
    command.downgrade(config, to)
    return time.perf_counter() - start


def offline_render(sd: ScriptDir, head: str, to: str) -> float:
    """What a user would run to see the SQL: `alembic downgrade head:to --sql` through the Python API."""
    import io

    from alembic import command
    from alembic.config import Config

    config = Config(str(sd.ini), output_buffer=io.StringIO())
    start = time.perf_counter()
    command.downgrade(config, f"{head}:{to}", sql=True)
    return time.perf_counter() - start


def plan_figures(steps: int, runs: int) -> Iterable[Result]:
    """create_request (sync, plan, offline render, destructive analysis with live row counts) for `steps` steps."""
    from opsapp.services.actors import Actor
    from opsapp.services.catalog.sync import sync_target
    from opsapp.services.rollback import requests as rollback

    users = common.ensure_users()
    sd = build_history(steps + 1)
    upgrade_head(sd)
    operator = Actor.from_user(users["operator"])
    sync_target(TARGET, actor=operator)
    head, to = rev_id(steps + 1), rev_id(1)

    def console() -> float:
        start = time.perf_counter()
        request = rollback.create_request(target_name=TARGET, to=to, reason="benchmark", actor=operator)
        elapsed = time.perf_counter() - start
        if len(request.steps) != steps:
            raise RuntimeError(f"planned {len(request.steps)} steps, expected {steps}")
        rollback.cancel_request(request, actor=operator)
        return elapsed

    offline_render(sd, head, to)
    console()  # warm both, untimed
    console_runs, base_runs = [], []
    for _ in range(runs):
        base_runs.append(offline_render(sd, head, to))
        console_runs.append(console())
    c, b = common.median(console_runs), common.median(base_runs)
    yield Result(
        f"create_request, {steps}-step plan",
        c * 1000,
        "ms",
        b * 1000,
        c / b,
        "ratio <= 2",
        c / b <= 2,
        note=f"median of {runs}; destructive analysis on ({steps - 1} dropped columns of a {ROWS:,}-row table, "
        "one scan); baseline = alembic.command.downgrade(head:to, sql=True), the offline SQL render",
        extra={"console_runs_ms": [x * 1000 for x in console_runs], "alembic_runs_ms": [x * 1000 for x in base_runs]},
    )


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    yield from plan_figures(sizes["plan_steps"], sizes["downgrade_runs"])
    n = sizes["downgrade_revisions"]
    runs = sizes["downgrade_runs"]
    sd = build_history(n)
    users = common.ensure_users()
    to = rev_id(1)
    # Warm both paths once (imports, __pycache__), untimed.
    alembic_run(sd, to)
    console_run(sd, to, users)
    console: list[float] = []
    baseline: list[float] = []
    for _ in range(runs):
        baseline.append(alembic_run(sd, to))
        console.append(console_run(sd, to, users)[0])
    c, b = common.median(console), common.median(baseline)
    overhead = c - b
    allowed = 0.150 + 0.05 * b
    yield Result(
        f"downgrade {n - 1} steps, execute_request",
        c * 1000,
        "ms",
        b * 1000,
        c / b,
        "overhead <= 150 ms + 5%",
        overhead <= allowed,
        note=f"overhead {overhead * 1000:.0f} ms (allowed {allowed * 1000:.0f} ms); median of {runs}; "
        f"{ROWS:,} rows; baseline = alembic.command.downgrade",
        extra={"console_runs_ms": [x * 1000 for x in console], "alembic_runs_ms": [x * 1000 for x in baseline]},
    )
    if profile:
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        console_run(sd, to, users, profiler)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
        common.log("   profile of execute_request:\n" + out.getvalue())


def cleanup() -> None:
    common.drop_database(DB)
