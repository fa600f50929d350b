"""Fleet figures: N real PostgreSQL targets on 3 script directories, declared in a TOML targets file.

    .venv/bin/python bench/bench_fleet.py [--targets 500] [--jobs 8] [--revisions 100] [--keep] [--out PATH]
    .venv/bin/python bench/run.py --only fleet [--quick]     # 500 targets, or 50 with --quick

Creates its own console database (OPS_BENCH_CONSOLE_DB + `_fleet`), three
script directories (bench/work/fleet_scripts_*, `--revisions` each), one
template database per directory upgraded to a different point, and N target
databases cloned from them (`CREATE DATABASE ... TEMPLATE`), so the fleet
has targets at head and behind; every target gets a verified snapshot row
and every tenth an open rollback request (the matrix's per-target facts).
Measures:

- the first `sync_revisions --all --jobs N` and a re-sync with nothing changed;
- the same re-sync with --jobs 1 (the serial baseline);
- p50/p95 of the admin index (the fleet matrix) over `--requests` requests,
  and its query count;
- catalog row counts: the Revision rows stored (one per revision per script
  directory) against the rows per-target storage would hold (one per revision
  per target, as before migration 0017).

Each figure is printed with its goal and pass/fail. The goals of issue 16
are for 500 targets (first sync <= 60 s, re-sync <= 15 s, index p95 <= 200 ms);
at another size the two sync goals are scaled by N/500 (a per-target budget).
Writes bench/results/fleet.json for a run at >= 500 targets, else
bench/work/fleet_quick.json (or --out). Drops every database it created
unless --keep. Timing is never asserted in the test suite.
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
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep target and template databases a --keep run left (CREATE only the missing ones): "
        "DROP DATABASE checkpoints, which takes seconds each on a busy server",
    )
    parser.add_argument("--drop", action="store_true", help="only drop the databases an earlier --keep run left")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON report")
    return parser.parse_args(argv)


# Issue 16's goals, for 500 targets; the sync goals scale with the fleet (a per-target budget).
GOAL_TARGETS = 500
GOALS = {"first_sync_seconds": 60.0, "resync_seconds": 15.0, "index_p95_ms": 200.0}


def goals_for(targets: int) -> dict[str, float]:
    scale = targets / GOAL_TARGETS
    return {
        "first_sync_seconds": round(GOALS["first_sync_seconds"] * scale, 2),
        "resync_seconds": round(GOALS["resync_seconds"] * scale, 2),
        "index_p95_ms": GOALS["index_p95_ms"],
    }


def judged(results: dict[str, object], goals: dict[str, float]) -> dict[str, dict[str, object]]:
    """{figure: {value, goal, pass}} for each figure that has a goal (lower is better)."""
    return {
        name: {"value": results[name], "goal": f"<= {goal}", "pass": results[name] <= goal}
        for name, goal in goals.items()
    }


def add_facts() -> None:
    """A verified snapshot per target and an open request on every tenth: what the matrix joins."""
    from opsapp.models import RollbackRequest, RollbackStatus, Snapshot, SnapshotStatus, Target

    targets = list(Target.objects.order_by("name"))
    Snapshot.objects.bulk_create(
        Snapshot(target=t, status=status, format="pg_custom")
        for t in targets
        for status in (SnapshotStatus.FAILED, SnapshotStatus.VERIFIED)
    )
    RollbackRequest.objects.bulk_create(
        RollbackRequest(target=t, status=RollbackStatus.PENDING, reason="bench", to_revision=t.current_heads[0])
        for t in targets[::10]
        if t.current_heads
    )


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


def existing_databases() -> set[str]:
    with common.admin_conn() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (PREFIX + "%",)).fetchall()
    return {db for (db,) in rows}


def build_templates(scripts: dict[str, tuple[Path, list[str]]], keep: set[str]) -> dict[str, tuple[str, str]]:
    """Per directory two template databases: one at head, one 5 revisions behind (those in `keep` reused)."""
    templates = {}
    with common.admin_conn() as conn:
        for region, (_, revs) in scripts.items():
            for kind, rev in (("head", revs[-1]), ("behind", revs[-6])):
                db = f"{PREFIX}pl_{region}_{kind}"
                templates[(region, kind)] = db
                if db in keep:
                    continue
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{db}"')
                import psycopg

                with psycopg.connect(common.database_url(db), autocommit=True) as target:
                    target.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
                    target.execute("INSERT INTO alembic_version VALUES (%s)", (rev,))
    return templates


def clone_targets(n: int, templates: dict, keep: set[str]) -> list[tuple[str, str, str]]:
    """(name, database, region) for n targets, every 7th one behind (those in `keep` reused)."""
    targets = []
    with common.admin_conn() as conn:
        for i in range(n):
            region = DIRECTORIES[i % 3]
            kind = "behind" if i % 7 == 0 else "head"
            db = f"{PREFIX}{i:04d}"
            targets.append((f"tenant_{i:04d}", db, region))
            if db in keep:
                continue
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{templates[(region, kind)]}"')
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


def print_verdicts(targets: int, verdicts: dict, results: dict, report: dict) -> None:
    scaled = " (goal scaled to this size)" if targets != GOAL_TARGETS else ""
    load = report["machine"].get("load_average_at_start")
    print(f"fleet of {targets} targets, load average at start {load}, at end {report['load_average_at_end']}")
    for name, verdict in verdicts.items():
        mark = "PASS" if verdict["pass"] else "FAIL"
        print(f"  {name:<20} {verdict['value']:>9}  goal {verdict['goal']}{scaled}  {mark}")
    print(f"  re-sync --jobs 1     {results['resync_serial_seconds']:>9}  (the serial baseline)")
    print(f"  index queries        {results['index_queries']:>9}  ({results['index_bytes']} bytes of HTML)")


def run(sizes: dict, *, profile: bool = False) -> list:
    """bench/run.py's `fleet` section: this script in its own process (it builds its own console database)."""
    import subprocess

    targets = sizes.get("fleet_targets", GOAL_TARGETS)
    out = common.WORK_DIR / f"fleet_{targets}.json"
    argv = [sys.executable, __file__, "--targets", str(targets), "--out", str(out)]
    argv += ["--jobs", str(sizes.get("fleet_jobs", 8)), "--revisions", str(sizes.get("fleet_revisions", 100))]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_fleet failed: {done.stderr[-2000:]}")
    report = json.loads(out.read_text())
    scaled = " (scaled to this size)" if report["goals_scaled_from_500"] else ""
    units = {"first_sync_seconds": "s", "resync_seconds": "s", "index_p95_ms": "ms"}
    results = [
        common.Result(
            name=f"fleet {targets}: {name}",
            value=verdict["value"],
            unit=units[name],
            goal=verdict["goal"] + scaled,
            meets_goal=verdict["pass"],
        )
        for name, verdict in report["verdicts"].items()
    ]
    rows = report["results"].get("catalog_rows")
    if rows:
        results.append(
            common.Result(
                name=f"fleet {targets}: catalog rows stored per directory vs per target",
                value=rows["per_directory_storage"],
                unit="rows",
                baseline=rows["per_target_storage"],
                ratio=common.ratio(rows["per_directory_storage"], rows["per_target_storage"]),
                note=f"{rows['catalogs']} catalogs",
            )
        )
    serial = report["results"]["resync_serial_seconds"]
    resync = report["results"]["resync_seconds"]
    results.append(
        common.Result(
            name=f"fleet {targets}: re-sync --jobs 8 vs --jobs 1",
            value=resync,
            unit="s",
            baseline=serial,
            ratio=common.ratio(resync, serial),
        )
    )
    return results


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.WORK_DIR.mkdir(exist_ok=True)
    if args.drop:
        drop_all(args.targets)
        common.log("dropped the bench's databases")
        return 0
    started = time.perf_counter()
    machine = common.machine_info()  # the load average before the bench adds its own
    common.log(f"building {args.targets} targets on {len(DIRECTORIES)} script directories")
    sys.path.insert(0, str(common.REPO_ROOT))
    keep = existing_databases() if args.reuse else set()
    scripts = build_scripts(args.revisions)
    templates = build_templates(scripts, keep)
    with common.stopwatch() as create_time:
        targets = clone_targets(args.targets, templates, keep)
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
    from django.db import connection
    from django.db.models import Sum
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from opsapp.models import Revision, ScriptCatalog, Target

    results["states"] = {
        state: Target.objects.filter(state=state).count()
        for state in Target.objects.values_list("state", flat=True).distinct()
    }
    results["revision_rows"] = Revision.objects.count()
    per_target = Target.objects.aggregate(rows=Sum("revision_count"))["rows"] or 0
    results["catalog_rows"] = {
        "per_target_storage": per_target,
        "per_directory_storage": results["revision_rows"],
        "catalogs": ScriptCatalog.objects.count(),
        "reduction": round(per_target / results["revision_rows"], 1) if results["revision_rows"] else None,
    }
    common.log(
        f"catalog rows: {per_target} per target -> {results['revision_rows']} in "
        f"{results['catalog_rows']['catalogs']} catalogs"
    )
    add_facts()
    user = get_user_model().objects.create_superuser("bench", "b@example.test", "pw-bench-123")
    client = Client()
    client.force_login(user)
    samples = []
    for i in range(args.requests + 3):
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            response = client.get("/admin/", HTTP_HOST="127.0.0.1", secure=True)
            elapsed = (time.perf_counter() - t0) * 1000
        assert response.status_code == 200, response.status_code
        if i >= 3:  # the first requests warm the process (templates, content types)
            samples.append(elapsed)
    results["index_p50_ms"] = round(common.percentile(samples, 50), 1)
    results["index_p95_ms"] = round(common.percentile(samples, 95), 1)
    results["index_queries"] = len(queries.captured_queries)
    results["index_bytes"] = len(response.content)
    common.log(f"admin index: p50 {results['index_p50_ms']} ms, p95 {results['index_p95_ms']} ms")

    goals = goals_for(args.targets)
    verdicts = judged(results, goals)
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "parameters": {"targets": args.targets, "jobs": args.jobs, "revisions_per_directory": args.revisions},
        "goals": {name: f"<= {goal}" for name, goal in goals.items()},
        "goals_scaled_from_500": args.targets != GOAL_TARGETS,
        "verdicts": verdicts,
        "results": results,
        "database_creation_seconds": round(create_time(), 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out or (
        common.RESULTS_DIR / "fleet.json" if args.targets >= GOAL_TARGETS else common.WORK_DIR / "fleet_quick.json"
    )
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_verdicts(args.targets, verdicts, results, report)
    common.log(f"wrote {out}")
    from django.db import connections

    connections.close_all()
    if not args.keep:
        drop_all(args.targets)
        common.log("dropped the bench's databases")
    return 0


def cleanup() -> None:
    drop_all(0)  # bench_fleet.py drops its databases itself; this catches a run that died half-way


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
