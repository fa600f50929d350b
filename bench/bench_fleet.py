"""Fleet figures: N real PostgreSQL targets on 3 script directories, declared in a TOML targets file.

    .venv/bin/python bench/bench_fleet.py [--targets 500] [--jobs 8] [--revisions 100] [--keep]

Creates its own console database (`ops_fleet_bench`), three script
directories (bench/work/fleet_scripts_*, `--revisions` each), one template
database per directory upgraded to a different point, and N target
databases cloned from them (`CREATE DATABASE ... TEMPLATE`), so the fleet
has targets at head and behind. Measures, in a subprocess-free run:

- the first `sync_revisions --all --jobs N` and a re-sync with nothing changed;
- the same re-sync with --jobs 1 (the serial baseline);
- p50/p95 of the admin index (the fleet matrix) over 30 requests;
- catalog row count (Revision rows; one per revision per target until the
  catalog is stored once per script directory).

Writes bench/results/fleet.json. Drops every database it created unless --keep.
Timing is never asserted in the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

CONSOLE_DB = common.bench_db("fleet")
PREFIX = common.bench_db("fleet_t")
DIRECTORIES = ("eu", "us", "ap")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--revisions", type=int, default=100, help="revisions per script directory")
    parser.add_argument("--requests", type=int, default=30, help="admin index requests for the p95")
    parser.add_argument("--keep", action="store_true", help="keep the databases for inspection")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "fleet.json", help="where the JSON goes")
    return parser.parse_args(argv)


def build_scripts(revisions: int) -> dict[str, tuple[Path, list[str]]]:
    from opsapp.demo.history_gen import ScriptDir

    result = {}
    for region in DIRECTORIES:
        root = common.fresh_dir(f"fleet_scripts_{region}")
        sd = ScriptDir(root)
        revs = []
        previous = None
        for i in range(revisions):
            rev = f"{region}{i:04d}"
            sd.add(rev, previous, message=f"step {i}")
            revs.append(rev)
            previous = rev
        result[region] = (sd.ini, revs)
    return result


def build_templates(scripts: dict[str, tuple[Path, list[str]]]) -> dict[str, tuple[str, str]]:
    """Per directory two template databases: one at head, one 5 revisions behind."""
    templates = {}
    with common.admin_conn() as conn:
        for region, (_, revs) in scripts.items():
            for kind, rev in (("head", revs[-1]), ("behind", revs[-6])):
                db = f"{PREFIX}pl_{region}_{kind}"
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{db}"')
                import psycopg

                with psycopg.connect(common.database_url(db), autocommit=True) as target:
                    target.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
                    target.execute("INSERT INTO alembic_version VALUES (%s)", (rev,))
                templates[(region, kind)] = db
    return templates


def clone_targets(n: int, templates: dict) -> list[tuple[str, str, str]]:
    """(name, database, region) for n targets, every 7th one behind."""
    targets = []
    with common.admin_conn() as conn:
        for i in range(n):
            region = DIRECTORIES[i % 3]
            kind = "behind" if i % 7 == 0 else "head"
            db = f"{PREFIX}{i:04d}"
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{templates[(region, kind)]}"')
            targets.append((f"tenant_{i:04d}", db, region))
    return targets


def write_targets_file(targets, scripts) -> Path:
    path = common.WORK_DIR / "fleet_targets.toml"
    lines = []
    for name, db, region in targets:
        variable = f"OPS_FLEET_BENCH_URL_{name.upper()}"
        os.environ[variable] = common.database_url(db)
        lines += [
            "[[target]]",
            f'name = "{name}"',
            f'url_env = "{variable}"',
            f'alembic_ini = "{scripts[region][0]}"',
            f'tags = {{ region = "{region}", tier = "{"prod" if int(name[-4:]) % 2 else "staging"}" }}',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def drop_all(n: int) -> None:
    with common.admin_conn() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",)).fetchall()
        for (db,) in rows:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'DROP DATABASE IF EXISTS "{CONSOLE_DB}" WITH (FORCE)')


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.WORK_DIR.mkdir(exist_ok=True)
    started = time.perf_counter()
    common.log(f"building {args.targets} targets on {len(DIRECTORIES)} script directories")
    sys.path.insert(0, str(common.REPO_ROOT))
    scripts = build_scripts(args.revisions)
    templates = build_templates(scripts)
    with common.stopwatch() as create_time:
        targets = clone_targets(args.targets, templates)
    common.log(f"created {len(targets)} databases in {create_time():.1f} s")
    path = write_targets_file(targets, scripts)

    common.configure_environment()
    os.environ["DATABASE_URL"] = common.database_url(CONSOLE_DB, "postgres")
    os.environ["OPS_TARGETS"] = ""
    os.environ["OPS_TARGETS_FILE"] = str(path)
    common.recreate_database(CONSOLE_DB)
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.management.base import CommandError

    call_command("migrate", verbosity=0)
    results: dict[str, object] = {}

    def sync(jobs: int) -> float:
        t0 = time.perf_counter()
        try:
            call_command("sync_revisions", "--all", "--jobs", str(jobs), stdout=io.StringIO(), verbosity=0)
        except CommandError as exc:
            common.log(f"sync reported: {str(exc)[:200]}")
        return time.perf_counter() - t0

    results["first_sync_seconds"] = round(sync(args.jobs), 2)
    common.log(f"first sync: {results['first_sync_seconds']} s")
    results["resync_seconds"] = round(sync(args.jobs), 2)
    common.log(f"re-sync: {results['resync_seconds']} s")
    results["resync_serial_seconds"] = round(sync(1), 2)
    common.log(f"re-sync with --jobs 1: {results['resync_serial_seconds']} s")

    from django.contrib.auth import get_user_model
    from django.test import Client

    from opsapp.models import Revision, Target

    results["states"] = {
        state: Target.objects.filter(state=state).count()
        for state in Target.objects.values_list("state", flat=True).distinct()
    }
    results["revision_rows"] = Revision.objects.count()
    user = get_user_model().objects.create_superuser("bench", "b@example.test", "pw-bench-123")
    client = Client()
    client.force_login(user)
    samples = []
    for _ in range(args.requests):
        t0 = time.perf_counter()
        response = client.get("/admin/", HTTP_HOST="127.0.0.1", secure=True)
        samples.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
    results["index_p50_ms"] = round(common.percentile(samples, 50), 1)
    results["index_p95_ms"] = round(common.percentile(samples, 95), 1)
    common.log(f"admin index: p50 {results['index_p50_ms']} ms, p95 {results['index_p95_ms']} ms")

    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": common.machine_info(),
        "parameters": {"targets": args.targets, "jobs": args.jobs, "revisions_per_directory": args.revisions},
        "goals": {"first_sync_seconds": "<= 60", "resync_seconds": "<= 15", "index_p95_ms": "<= 200"},
        "results": results,
        "database_creation_seconds": round(create_time(), 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    common.log(f"wrote {out}")
    from django.db import connections

    connections.close_all()
    if not args.keep:
        drop_all(args.targets)
    return 0


# ------------------------------------------------------------------ as a section of bench/run.py
FULL_TARGETS = 500  # the size the goals are set at


def run(sizes: dict, *, profile: bool = False):
    """The fleet figures as rows of bench/run.py, measured in a process of its own (its own settings)."""
    import subprocess

    from common import Result

    out = common.WORK_DIR / "fleet_section.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--out", str(out)]
    argv += ["--targets", str(sizes["fleet_targets"]), "--jobs", str(sizes["fleet_jobs"])]
    argv += ["--revisions", str(sizes["fleet_revisions"])]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench_fleet.py exited {done.returncode}: {done.stderr[-2000:]}")
    report = json.loads(out.read_text())
    res, params = report["results"], report["parameters"]
    at_size = params["targets"] >= FULL_TARGETS
    size = f"{params['targets']} targets, {params['revisions_per_directory']} revisions per directory"

    def goal(text: str, ok: bool) -> tuple[str, bool | None]:
        return (text, ok) if at_size else (f"{text} at {FULL_TARGETS} targets", None)

    g, ok = goal("<= 60 s", res["first_sync_seconds"] <= 60)
    yield Result(
        f"fleet first sync --all --jobs {params['jobs']}",
        res["first_sync_seconds"],
        "s",
        goal=g,
        meets_goal=ok,
        note=size,
        extra=report,
    )
    g, ok = goal("<= 15 s", res["resync_seconds"] <= 15)
    yield Result(
        f"fleet re-sync, nothing changed, --jobs {params['jobs']} vs --jobs 1",
        res["resync_seconds"],
        "s",
        baseline=res["resync_serial_seconds"],
        ratio=common.ratio(res["resync_seconds"], res["resync_serial_seconds"]),
        goal=g,
        meets_goal=ok,
        note=size,
    )
    g, ok = goal("p95 <= 200 ms", res["index_p95_ms"] <= 200)
    yield Result(
        "fleet admin index (the fleet matrix), p95",
        res["index_p95_ms"],
        "ms",
        goal=g,
        meets_goal=ok,
        note=f"p50 {res['index_p50_ms']} ms; {size}",
    )


def cleanup() -> None:
    drop_all(0)  # bench_fleet.py drops its databases itself; this catches a run that died half-way


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
