"""Benchmark the console against the plain tools it wraps. One entry point.

    python bench/run.py [--quick] [--only catalog,startup,audit,snapshot,downgrade,rehearsal,jobs,fleet] [--profile]

Builds its own data (script directories under bench/work/, a console database
`ops_bench`, throwaway target databases it drops at the end), prints a table
(figure, console, baseline, ratio, goal) and writes bench/results/latest.json
(bench/work/quick.json with --quick). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

SECTIONS = ("catalog", "startup", "audit", "snapshot", "downgrade", "rehearsal", "jobs", "fleet")

FULL = {
    "catalog_sizes": (1_000, 10_000, 50_000),
    "walk_limit": 10_000,  # Alembic's own walk of 50k revisions takes ~10 minutes
    "cold_processes": 10,
    "page_requests": 30,
    "audit_events": 1_000_000,
    "audit_page_requests": 30,
    "append_per_writer": 500,
    "snapshot_mb": 1024,
    "downgrade_revisions": 50,
    "downgrade_runs": 5,
    "rehearsal_mb": 1024,
    "rehearsal_runs": 2,
    "plan_steps": 200,
    "startup_runs": 10,
    "snapshot_rounds": 3,
    "latency_samples": 50,
    "jobs_count": 500,
    "jobs_pairs": 2,
    "jobs_snapshot_rows": 400_000,
    "fleet_targets": 500,
    "fleet_jobs": 8,
    "fleet_revisions": 100,
}
QUICK = {
    "catalog_sizes": (200, 1_000),
    "walk_limit": 1_000,
    "cold_processes": 3,
    "page_requests": 30,
    "audit_events": 50_000,
    "audit_page_requests": 30,
    "append_per_writer": 100,
    "snapshot_mb": 50,
    "downgrade_revisions": 50,
    "downgrade_runs": 3,
    "rehearsal_mb": 50,
    "rehearsal_runs": 2,
    "plan_steps": 200,
    "startup_runs": 3,
    "snapshot_rounds": 3,
    "latency_samples": 10,
    "jobs_count": 100,
    "jobs_pairs": 1,
    "jobs_snapshot_rows": 50_000,
    "fleet_targets": 12,
    "fleet_jobs": 4,
    "fleet_revisions": 10,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    parser.add_argument("--profile", action="store_true", help="cProfile the figures that miss their goal")
    parser.add_argument("--keep", action="store_true", help="keep the console and target databases for inspection")
    parser.add_argument(
        "--catalog-sizes",
        help="comma-separated revision counts for the catalog section (e.g. 10000 for a partial run at one size)",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def setup_console_db() -> None:
    import django
    from django.core.management import call_command

    common.log(f"creating console database {common.CONSOLE_DB}")
    common.recreate_database(common.CONSOLE_DB)
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def print_table(results: list[common.Result]) -> None:
    header = ("figure", "console", "baseline", "unit", "ratio", "goal", "ok")
    rows = [header]
    for r in results:
        ok = {True: "yes", False: "NO", None: "-"}[r.meets_goal]
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "-"
        rows.append((r.name, fmt(r.value), fmt(r.baseline), r.unit, ratio, r.goal or "report", ok))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        line = "  ".join(
            str(cell).ljust(widths[i]) if i in (0, 3, 5) else str(cell).rjust(widths[i]) for i, cell in enumerate(row)
        )
        print(line)
        if n == 0:
            print("  ".join("-" * w for w in widths))
    notes = [r for r in results if r.note]
    if notes:
        print()
        for r in notes:
            print(f"* {r.name}: {r.note}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    if args.catalog_sizes:
        sizes["catalog_sizes"] = tuple(int(n) for n in args.catalog_sizes.split(","))
    common.configure_environment()
    machine = common.machine_info()
    started = time.time()
    setup_console_db()

    import bench_audit
    import bench_catalog
    import bench_downgrade
    import bench_fleet
    import bench_jobs
    import bench_rehearsal
    import bench_snapshot
    import bench_startup

    modules = {
        "catalog": bench_catalog,
        "startup": bench_startup,
        "audit": bench_audit,
        "snapshot": bench_snapshot,
        "downgrade": bench_downgrade,
        "rehearsal": bench_rehearsal,
        "jobs": bench_jobs,
        "fleet": bench_fleet,
    }
    results: list[common.Result] = []
    failures: dict[str, str] = {}
    for section in args.sections:
        common.log(f"== {section}")
        section_start = time.time()
        try:
            for result in modules[section].run(sizes, profile=args.profile):
                result.section = section
                results.append(result)
                common.log(f"   {result.name}: {fmt(result.value)} {result.unit} (baseline {fmt(result.baseline)})")
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            failures[section] = "".join(traceback.format_exception(exc))
            common.log(f"section {section} FAILED: {exc!r}")
            results.append(
                common.Result(name=f"{section}: failed", value=None, unit="", note=str(exc)[:300], section=section)
            )
        finally:
            if not args.keep:
                getattr(modules[section], "cleanup", lambda: None)()
        common.log(f"   {section} took {time.time() - section_start:.0f} s")

    print()
    print_table(results)
    missed = [r.name for r in results if r.meets_goal is False]
    print(f"\ngoals: {sum(1 for r in results if r.meets_goal is True)} met, {len(missed)} missed")
    for name in missed:
        print(f"  MISSED: {name}")
    for section, trace in failures.items():
        print(f"\n--- {section} failed:\n{trace}", file=sys.stderr)

    # Quick runs are for development: their results stay in the git-ignored work directory.
    # One file is one run: a partial (--only) or quick run never overwrites or splices latest.json.
    complete = set(args.sections) == set(SECTIONS) and not args.catalog_sizes
    if args.quick:
        out = common.WORK_DIR / "quick.json"
    elif not complete:
        out = common.WORK_DIR / "partial.json"
    else:
        out = common.RESULTS_DIR / "latest.json"
    out.parent.mkdir(exist_ok=True)
    payload = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "sections": args.sections,
        "goals": {
            "met": sum(1 for r in results if r.meets_goal is True),
            "missed": [r.name for r in results if r.meets_goal is False],
        },
        "results": [r.as_json() for r in results],
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(common.REPO_ROOT)} in {payload['duration_s']:.0f} s")
    if not args.keep:
        from django.db import connections

        connections.close_all()
        common.drop_database(common.CONSOLE_DB)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
