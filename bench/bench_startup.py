"""Cron command start-up: whole processes, timed from the outside like `hyperfine`.

Each console command a cron job runs is timed as a process (interpreter,
`django.setup()`, admin autodiscover, the work) against `alembic current`
on the same target: the plain tool a user would otherwise put in cron.
Runs alternate, after one untimed warm-up of each (page cache, __pycache__).
"""

from __future__ import annotations

import compileall
import sys
from collections.abc import Iterable
from pathlib import Path

import common
from common import Result

from opsapp.demo.history_gen import ScriptDir, generate_history

TARGET = "bench_start"
# Every line of docs/production.md's crontab (one target; --verbosity 0 as there).
COMMANDS = {
    "check_drift": ["check_drift", "--target", TARGET, "--verbosity", "0"],
    "sync_revisions": ["sync_revisions", "--target", TARGET, "--verbosity", "0"],
    "take_snapshot": ["take_snapshot", "--target", TARGET, "--verbosity", "0"],
    "verify_snapshots": ["verify_snapshots", "--target", TARGET, "--verbosity", "0"],
    "prune_snapshots": ["prune_snapshots", "--keep", "14", "--older-than", "30", "--verbosity", "0"],
    "verify_audit_log": ["verify_audit_log", "--verbosity", "0"],
    "execute_rollback --reconcile": ["execute_rollback", "--reconcile", "--verbosity", "0"],
    "cancel_operation --reconcile": ["cancel_operation", "--reconcile", "--verbosity", "0"],
    "rehearse_rollback --reconcile": ["rehearse_rollback", "--reconcile", "--verbosity", "0"],
    "check_cron": ["check_cron", "--verbosity", "0"],
}


def build_target() -> ScriptDir:
    from alembic import command
    from alembic.config import Config

    db, folder = common.TARGETS[TARGET]
    url = common.recreate_database(db)
    sd = ScriptDir(common.fresh_dir(folder), url.replace("postgresql://", "postgresql+psycopg://"))
    generate_history(sd, 30, merges=2, seed=3)
    command.upgrade(Config(str(sd.ini)), "heads")
    return sd


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    from opsapp.services.catalog.sync import sync_target

    sd = build_target()
    sync_target(TARGET)
    # Cron runs an installed console whose bytecode is compiled; with PYTHONDONTWRITEBYTECODE set
    # (as on the bench machine) every run would otherwise recompile the project's own modules.
    compileall.compile_dir(str(common.REPO_ROOT / "opsapp"), quiet=1)
    compileall.compile_dir(str(common.REPO_ROOT / "console"), quiet=1)
    alembic = [str(Path(sys.executable).parent / "alembic"), "-c", str(sd.ini), "current"]
    argvs = {"alembic current": alembic}
    for name, args in COMMANDS.items():
        argvs[name] = [sys.executable, str(common.REPO_ROOT / "manage.py"), *args]
    for argv in argvs.values():
        common.process_seconds(argv)  # warm-up, untimed
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(sizes["startup_runs"]):
        for name, argv in argvs.items():
            samples[name].append(common.process_seconds(argv))
    base = common.median(samples["alembic current"])
    for name in COMMANDS:
        value = common.median(samples[name])
        yield Result(
            f"cron command {name}, whole process",
            value * 1000,
            "ms",
            base * 1000,
            value / base,
            "ratio <= 1.1",
            value / base <= 1.1,
            note=f"median of {sizes['startup_runs']} alternating runs; baseline = `alembic current` on the same "
            f"target, same machine; p95 {common.percentile(samples[name], 95) * 1000:.0f} ms",
            extra={
                "runs_ms": [x * 1000 for x in samples[name]],
                "baseline_runs_ms": [x * 1000 for x in samples["alembic current"]],
            },
        )


def cleanup() -> None:
    common.drop_database(common.TARGETS[TARGET][0])
