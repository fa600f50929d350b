"""Benchmark of the durable jobs (issue 13): queue latency, worker throughput, snapshot overhead.

    python bench/bench_jobs.py [--quick] [--keep]

Builds its own console database `<prefix>_jobs` and scratch targets (SQLite
files under bench/work/jobs/, one PostgreSQL database `<prefix>_jobs_snap`; prefix: OPS_BENCH_CONSOLE_DB, default ops_bench),
runs real `manage.py db_worker` processes, prints one JSON object and writes
it to bench/work/jobs.json. Figures:

- enqueue-to-start latency (p50/p95) with one idle worker polling every 0.1 s
  (the worker's `--interval`; the default 1 s adds up to 1 s);
- throughput of N queued sync jobs (500; --quick 100) across 2 workers
  against 1 (goal >= 1.7x on a 2-core machine); the jobs are spread over
  20 targets, since two jobs on one target never run at once;
- the snapshot's dump time (the job's Snapshot row, started -> complete,
  progress reporting on) against plain `pg_dump -Fc` of the same database
  (goal <= 1.05x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work" / "jobs"
PG = os.environ.get("OPS_BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
# Named after OPS_BENCH_CONSOLE_DB (as bench/common.py does) so parallel benches never share a database.
_PREFIX = os.environ.get("OPS_BENCH_CONSOLE_DB", "ops_bench")
CONSOLE_DB = f"{_PREFIX}_jobs"
SNAP_DB = f"{_PREFIX}_jobs_snap"
SYNC_TARGETS = 20


def admin(sql: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def env() -> dict[str, str]:
    names = [f"j{i}" for i in range(SYNC_TARGETS)] + ["jsnap"]
    e = dict(os.environ)
    e.update(
        {
            "DEBUG": "1",
            "OPS_IGNORE_DOTENV": "1",
            "OPS_VAR_DIR": str(WORK),
            "DATABASE_URL": f"{PG.replace('postgresql://', 'postgres://')}/{CONSOLE_DB}",
            "OPS_SNAPSHOT_DIR": str(WORK / "snapshots"),
            "OPS_TARGETS": ",".join(names),
            "EMAIL_URL": "memorymail://",
            "OPS_HEARTBEAT_SECONDS": "1",
        }
    )
    for name in names[:-1]:
        e[f"OPS_TARGET_{name.upper()}_URL"] = f"sqlite:///{WORK / name}.sqlite3"
        e[f"OPS_TARGET_{name.upper()}_ALEMBIC_INI"] = str(ROOT / "alembic.ini")
    e["OPS_TARGET_JSNAP_URL"] = f"{PG}/{SNAP_DB}"
    e["OPS_TARGET_JSNAP_ALEMBIC_INI"] = str(ROOT / "alembic.ini")
    return e


def manage(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        check=check,
    )


def worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "db_worker", "--no-reload", "--no-startup-delay", "-v", "0", *args],
        cwd=ROOT,
        env=env(),
    )


def console_rows(sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(f"{PG}/{CONSOLE_DB}", autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def enqueue_sync(target: str) -> int:
    return json.loads(manage("sync_revisions", "--target", target, "--enqueue", "--json").stdout)["operation"]


def latency(samples: int) -> dict:
    proc = worker("--interval", "0.1")
    try:
        waits = []
        for i in range(samples):
            op = enqueue_sync(f"j{i % SYNC_TARGETS}")
            while True:
                row = console_rows(
                    "SELECT EXTRACT(EPOCH FROM started_at - queued_at), state FROM opsapp_operation WHERE id = %s",
                    (op,),
                )[0]
                if row[0] is not None and row[1] not in ("queued", "running"):
                    waits.append(float(row[0]) * 1000)
                    break
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait()
    waits.sort()
    return {
        "samples": samples,
        "p50_ms": round(statistics.median(waits), 1),
        "p95_ms": round(waits[max(0, int(len(waits) * 0.95) - 1)], 1),
        "interval_s": 0.1,
    }


def bulk_enqueue(count: int) -> None:
    # One command per target would dominate; queue them from one Django process instead.
    code = (
        "from opsapp.models import OperationKind\n"
        "from opsapp.services.actors import Actor\n"
        "from opsapp.services.operations.queue import enqueue\n"
        f"for i in range({count}):\n"
        f"    enqueue(OperationKind.SYNC, f'j{{i % {SYNC_TARGETS}}}', actor=Actor(username='bench'))\n"
    )
    manage("shell", "-c", code)


def drain(workers: int) -> float:
    started = time.monotonic()
    procs = [worker("--batch", "--interval", "0.1") for _ in range(workers)]
    for p in procs:
        p.wait()
    return time.monotonic() - started


def throughput(count: int) -> dict:
    times = {}
    for workers in (1, 2):
        bulk_enqueue(count)
        times[workers] = drain(workers)
    left = console_rows("SELECT count(*) FROM opsapp_operation WHERE state <> 'succeeded'")[0][0]
    return {
        "jobs": count,
        "one_worker_s": round(times[1], 2),
        "two_workers_s": round(times[2], 2),
        "speedup": round(times[1] / times[2], 2),
        "goal": ">= 1.7",
        "not_succeeded": left,
    }


def snapshot_overhead(rows: int) -> dict:
    with psycopg.connect(f"{PG}/{SNAP_DB}", autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE filler AS SELECT g AS id, (SELECT string_agg(md5(random()::text || g::text || s::text), '') "
            "FROM generate_series(1, 12) s) AS body FROM generate_series(1, %s) g",
            (rows,),
        )
    plain = []
    for _ in range(3):
        t = time.monotonic()
        with open(WORK / "plain.dump", "wb") as out:
            subprocess.run(["pg_dump", "-Fc", f"--dbname={PG}/{SNAP_DB}"], stdout=out, check=True)
        plain.append(time.monotonic() - t)
    jobs = []
    for _ in range(3):
        op = json.loads(manage("take_snapshot", "--target", "jsnap", "--enqueue", "--json").stdout)["operation"]
        drain(1)
        (dump_s,) = console_rows(
            "SELECT EXTRACT(EPOCH FROM s.finished_at - s.started_at) FROM opsapp_operation o "
            "JOIN opsapp_snapshot s ON s.id = o.snapshot_id WHERE o.id = %s",
            (op,),
        )[0]
        jobs.append(float(dump_s))
    return {
        "rows": rows,
        "plain_pg_dump_s": round(min(plain), 2),
        "job_dump_s": round(min(jobs), 2),
        "ratio": round(min(jobs) / min(plain), 3),
        "goal": "<= 1.05",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    opts = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    for db in (CONSOLE_DB, SNAP_DB):
        admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin(f'CREATE DATABASE "{db}"')
    try:
        manage("migrate", "--noinput", "-v", "0")
        results = {
            "latency": latency(10 if opts.quick else 50),
            "throughput": throughput(100 if opts.quick else 500),
            "snapshot": snapshot_overhead(50_000 if opts.quick else 400_000),
        }
    finally:
        if not opts.keep:
            for db in (CONSOLE_DB, SNAP_DB):
                admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    text = json.dumps(results, indent=2)
    (WORK.parent / "jobs.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
