"""Durable jobs (issue 13): queue latency, worker throughput, snapshot overhead.

    python bench/run.py --only jobs [--quick] [--profile]      as a section of the bench
    python bench/bench_jobs.py [--quick] [--keep] [--profile]  alone (JSON on stdout, bench/work/jobs.json)

Builds its own console database `<prefix>_jobs` (prefix: OPS_BENCH_CONSOLE_DB),
20 SQLite targets at the head of a generated 30-revision history, and one
PostgreSQL target `<prefix>_jobs_snap`; runs real `manage.py db_worker`
processes (bench/jobs_child.py) with that environment. Figures:

- enqueue-to-start latency p50/p95 with one idle worker, at the worker's
  `--interval` 1 s (django-tasks-db's default, what production runs) and
  0.1 s; from the Operation rows (queued_at -> started_at);
- throughput of N sync jobs (500; --quick 100) across 2 workers against 1,
  in the same run, alternating. The jobs are queued held (their queue rows
  get a run_after a day ahead), the workers are started and warmed up, and
  the clock runs from the moment every job is released (one UPDATE) to the
  last Operation's finished_at. Jobs are spread over 20 targets (two jobs on
  one target never run at once). Goal >= 1.7x on a 2-core machine;
- the snapshot job's dump (its Snapshot row, started -> finished, progress
  reporting on) against plain `pg_dump -Fc` of the same database, best of 3
  (goal <= 1.05x).

`--profile` runs the workers of the last throughput pair under cProfile and
prints the top of each profile (bench/work/jobs/profiles/*.prof).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402
from common import Result  # noqa: E402

ROOT = common.REPO_ROOT
WORK = common.WORK_DIR / "jobs"
CHILD = common.BENCH_DIR / "jobs_child.py"
CONSOLE_DB = common.bench_db("jobs")
SNAP_DB = common.bench_db("jobs_snap")
SYNC_TARGETS = [f"j{i}" for i in range(20)]
REVISIONS = 30
DATE_MAX = "9999-01-01 00:00:00+00"  # django-tasks-db's run_after of a job queued without a delay


# ------------------------------------------------------------------ plumbing
def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        {
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "DEBUG": "1",
            "OPS_IGNORE_DOTENV": "1",
            "LOG_LEVEL": "WARNING",
            "OPS_VAR_DIR": str(WORK),
            "DATABASE_URL": common.database_url(CONSOLE_DB, "postgres"),
            "OPS_SNAPSHOT_DIR": str(WORK / "snapshots"),
            "OPS_TARGETS": ",".join([*SYNC_TARGETS, "jsnap"]),
            "EMAIL_URL": "memorymail://",
            "OPS_HEARTBEAT_SECONDS": "1",
            # As docs/production.md runs workers: each keeps its connection between jobs.
            "CONN_MAX_AGE": "600",
        }
    )
    ini = str(WORK / "scripts" / "alembic.ini")
    for name in SYNC_TARGETS:
        e[f"OPS_TARGET_{name.upper()}_URL"] = f"sqlite:///{WORK / name}.sqlite3"
        e[f"OPS_TARGET_{name.upper()}_ALEMBIC_INI"] = ini
    e["OPS_TARGET_JSNAP_URL"] = common.database_url(SNAP_DB)
    e["OPS_TARGET_JSNAP_ALEMBIC_INI"] = ini
    return e


def child(verb: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(CHILD), verb, *args], cwd=ROOT, env=env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"jobs_child {verb} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def manage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        check=True,
    )


def console(sql: str, params: tuple | list = ()) -> list[tuple]:
    with psycopg.connect(common.database_url(CONSOLE_DB), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def start_workers(count: int, interval: float, profile_dir: Path | None = None) -> list[subprocess.Popen]:
    """`count` db_worker processes, returned once each has warmed up and is about to poll."""
    e = env()
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        e["OPS_BENCH_WORKER_PROFILE"] = str(profile_dir)
    ready = [WORK / f"ready-{i}" for i in range(count)]
    for path in ready:
        path.unlink(missing_ok=True)
    # Each worker in a session of its own, as systemd starts each worker unit in a cgroup of its own:
    # Linux shares CPU fairly between sessions (autogroup), so workers started from one session would
    # share one session's share of a busy machine, and two could not scale whatever the code does.
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), "worker", str(path), str(interval)],
            cwd=ROOT,
            env=e,
            start_new_session=True,
        )
        for path in ready
    ]
    deadline = time.monotonic() + 300
    while not all(path.exists() for path in ready):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            stop_workers(procs)
            raise RuntimeError("a worker did not start")
        time.sleep(0.05)
    time.sleep(max(1.0, 2 * interval))  # its reconcile and first polls: idle from here on
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # an idle worker exits at once; a busy one after its job
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_finished(ids: list[int], timeout: float) -> None:
    """Poll (one connection, every 0.25 s: the bench's own load stays small) until none of `ids` is active."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(common.database_url(CONSOLE_DB), autocommit=True) as conn:
        while conn.execute(
            "SELECT count(*) FROM opsapp_operation WHERE id = ANY(%s) AND state IN ('queued', 'running')", (ids,)
        ).fetchone()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs still queued or running after {timeout:.0f} s")
            time.sleep(0.25)


def backend_pids() -> list[int]:
    """Server processes of the console database's open sessions, the bench's own excepted (the workers')."""
    with psycopg.connect(common.database_url(CONSOLE_DB), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [pid for (pid,) in rows]


def pid_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes (threads included) so far, from /proc; 0 for one that has ended."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def console_counters() -> tuple[int, int]:
    """(sessions, committed transactions) of the console database so far (pg_stat_database)."""
    with psycopg.connect(common.database_url(CONSOLE_DB), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute(
            "SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------ setup
def build() -> None:
    """The console database, the script directory, 20 SQLite targets and the snapshot target at its heads."""
    import shutil

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from opsapp.demo.history_gen import ScriptDir, generate_history

    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    (WORK / "snapshots").mkdir()
    for db in (CONSOLE_DB, SNAP_DB):
        common.recreate_database(db)
    sd = ScriptDir(WORK / "scripts")
    generate_history(sd, REVISIONS, merges=2, seed=13)
    first = WORK / f"{SYNC_TARGETS[0]}.sqlite3"
    # The snapshot target too: a snapshot is verified to carry alembic_version.
    for url in (f"sqlite:///{first}", common.database_url(SNAP_DB, "postgresql+psycopg")):
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            cfg = Config(str(sd.ini))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        engine.dispose()
    for name in SYNC_TARGETS[1:]:
        shutil.copyfile(first, WORK / f"{name}.sqlite3")
    manage("migrate", "--noinput", "-v", "0")


# ------------------------------------------------------------------ figures
def latency(samples: int, interval: float) -> dict:
    procs = start_workers(1, interval)
    try:
        ids = child("latency", str(samples), ",".join(SYNC_TARGETS))["operations"]
    finally:
        stop_workers(procs)
    waits = [
        float(s) * 1000
        for (s,) in console(
            "SELECT EXTRACT(EPOCH FROM started_at - queued_at) FROM opsapp_operation WHERE id = ANY(%s)", (ids,)
        )
    ]
    return {
        "interval_s": interval,
        "samples": samples,
        "p50_ms": round(common.percentile(waits, 50), 1),
        "p95_ms": round(common.percentile(waits, 95), 1),
    }


def throughput_round(workers: int, count: int, profile_dir: Path | None = None) -> dict:
    """Queue `count` held jobs, start `workers` workers, release the jobs; time release -> last finished."""
    queued = child("enqueue", str(count), ",".join(SYNC_TARGETS))
    ids, tasks = queued["operations"], queued["tasks"]
    procs = start_workers(workers, 0.1, profile_dir)
    try:
        load_before = load_average()
        # The workers keep their connections (CONN_MAX_AGE, the liveness session): their server
        # processes live through the round, so their CPU can be read too.
        backends = backend_pids()
        cpu_before = pid_cpu_seconds([p.pid for p in procs])
        server_before = pid_cpu_seconds(backends)
        sessions_before, xacts_before = console_counters()
        with psycopg.connect(common.database_url(CONSOLE_DB), autocommit=True) as conn:
            release = sql.SQL("UPDATE {} SET run_after = %s WHERE id = ANY(%s)").format(
                sql.Identifier(queued["queue_table"])
            )
            conn.execute(release, (DATE_MAX, tasks))
            (released,) = conn.execute("SELECT clock_timestamp()").fetchone()
        wait_finished(ids, timeout=count * 10)
        load_after = load_average()
        cpu = pid_cpu_seconds([p.pid for p in procs]) - cpu_before
        server_cpu = pid_cpu_seconds(backends) - server_before
    finally:
        stop_workers(procs)
    time.sleep(1)  # the statistics of ended sessions reach pg_stat_database
    sessions_after, xacts_after = console_counters()
    (elapsed, succeeded, in_run, per_worker) = console(
        "SELECT EXTRACT(EPOCH FROM max(finished_at) - %s), count(*) FILTER (WHERE state = 'succeeded'), "
        "EXTRACT(EPOCH FROM avg(finished_at - started_at)), "
        "(SELECT array_agg(n ORDER BY n) FROM (SELECT count(*) AS n FROM opsapp_operation "
        "  WHERE id = ANY(%s) GROUP BY worker_pid) w) "
        "FROM opsapp_operation WHERE id = ANY(%s)",
        (released, ids, ids),
    )[0]
    elapsed = float(elapsed)
    return {
        "workers": workers,
        "jobs": count,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(count / elapsed, 1),
        # Worker time per job: `workers` * elapsed / count. What the Operation row's own
        # started -> finished does not cover is the queue's share (claim, queue row, liveness lock).
        "worker_ms_per_job": round(workers * elapsed / count * 1000, 1),
        "operation_ms_per_job": round(float(in_run) * 1000, 1),
        "worker_cpu_ms_per_job": round(cpu / count * 1000, 1),
        # The server processes of the sessions the workers had open when the jobs were released.
        "server_cpu_ms_per_job": round(server_cpu / count * 1000, 1),
        # Includes the bench's own few connections (release, polling, these counters).
        "console_sessions_per_job": round((sessions_after - sessions_before) / count, 2),
        "console_transactions_per_job": round((xacts_after - xacts_before) / count, 1),
        "jobs_per_worker": per_worker,
        "succeeded": succeeded,
        "load_average": [load_before, load_after],
    }


def throughput(count: int, pairs: int, profile_dir: Path | None = None) -> dict:
    """`pairs` rounds of 1 worker then 2 workers; the speedup of each pair, and their median."""
    rounds = []
    for n in range(pairs):
        last = n == pairs - 1
        for workers in (1, 2):
            rounds.append(
                throughput_round(workers, count, profile_dir / f"w{workers}" if profile_dir and last else None)
            )
            common.log(f"   {workers} worker(s): {rounds[-1]}")
    one = [r["seconds"] for r in rounds if r["workers"] == 1]
    two = [r["seconds"] for r in rounds if r["workers"] == 2]
    speedups = [a / b for a, b in zip(one, two, strict=True)]
    return {
        "jobs": count,
        "one_worker_s": round(common.median(one), 3),
        "two_workers_s": round(common.median(two), 3),
        "speedup": round(common.median(speedups), 3),
        "speedups": [round(s, 3) for s in speedups],
        "rounds": rounds,
    }


def snapshot_overhead(rows: int) -> dict:
    with psycopg.connect(common.database_url(SNAP_DB), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE filler AS SELECT g AS id, (SELECT string_agg(md5(random()::text || g::text || s::text), '') "
            "FROM generate_series(1, 12) s) AS body FROM generate_series(1, %s) g",
            (rows,),
        )
    plain, jobs = [], []
    procs = start_workers(1, 0.1)
    try:
        for _ in range(3):  # alternating: the same load for both
            t = time.monotonic()
            with open(WORK / "plain.dump", "wb") as out:
                # In a session of its own, like the worker whose pg_dump it is compared with (see start_workers).
                subprocess.run(
                    ["pg_dump", "-Fc", f"--dbname={common.database_url(SNAP_DB)}"],
                    stdout=out,
                    check=True,
                    start_new_session=True,
                )
            plain.append(time.monotonic() - t)
            op = json.loads(manage("take_snapshot", "--target", "jsnap", "--enqueue", "--json").stdout)["operation"]
            wait_finished([op], timeout=600)
            ((dump_s, state, error),) = console(
                "SELECT EXTRACT(EPOCH FROM s.finished_at - s.started_at), o.state, o.error FROM opsapp_operation o "
                "LEFT JOIN opsapp_snapshot s ON s.id = o.snapshot_id WHERE o.id = %s",
                (op,),
            )
            if state != "succeeded":
                raise RuntimeError(f"snapshot operation #{op} ended {state}: {error}")
            jobs.append(float(dump_s))
    finally:
        stop_workers(procs)
    return {
        "rows": rows,
        "plain_pg_dump_s": round(min(plain), 3),
        "job_dump_s": round(min(jobs), 3),
        "ratio": round(min(jobs) / min(plain), 3),
    }


def print_profiles(profile_dir: Path, limit: int = 25) -> None:
    import pstats

    for path in sorted(profile_dir.rglob("*.prof")):
        print(f"\n--- {path.relative_to(common.REPO_ROOT)} (cumulative)", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats("cumulative").print_stats(limit)
        print(f"--- {path.relative_to(common.REPO_ROOT)} (own time)", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(limit)


# ------------------------------------------------------------------ the section
def measure(sizes: dict, *, profile: bool = False) -> dict:
    build()
    profile_dir = WORK / "profiles" if profile else None
    results = {
        "latency": [latency(sizes["latency_samples"], interval) for interval in (1.0, 0.1)],
        "throughput": throughput(sizes["jobs_count"], sizes["jobs_pairs"], profile_dir),
        "snapshot": snapshot_overhead(sizes["jobs_snapshot_rows"]),
    }
    if profile_dir is not None:
        print_profiles(profile_dir)
    return results


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    """The section's rows for bench/run.py."""
    data = measure(sizes, profile=profile)
    for lat in data["latency"]:
        yield Result(
            f"job enqueue-to-start, idle worker polling every {lat['interval_s']:g} s, p50",
            lat["p50_ms"],
            "ms",
            note=f"p95 {lat['p95_ms']:.0f} ms over {lat['samples']} jobs (Operation queued_at -> started_at)",
            extra=lat,
        )
    tp = data["throughput"]
    loads = [r["load_average"][0][0] for r in tp["rounds"]]
    yield Result(
        f"{tp['jobs']} queued sync jobs, 2 workers vs 1 (speedup)",
        tp["two_workers_s"],
        "s",
        baseline=tp["one_worker_s"],
        ratio=tp["speedup"],
        goal="speedup >= 1.7",
        meets_goal=tp["speedup"] >= 1.7,
        note=(
            f"ratio = 1-worker time / 2-worker time (median of {len(tp['speedups'])} alternating pairs: "
            f"{', '.join(f'{s:.2f}' for s in tp['speedups'])}); clock from release of the held jobs to the last "
            f"finished_at, workers started and idle before; 1-minute load average {min(loads):.1f}-{max(loads):.1f}"
        ),
        extra=tp,
    )
    one = [r for r in tp["rounds"] if r["workers"] == 1]
    yield Result(
        "sync job, worker time per job (1 worker)",
        common.median([r["worker_ms_per_job"] for r in one]),
        "ms",
        baseline=common.median([r["operation_ms_per_job"] for r in one]),
        note="console = release-to-last-finished / jobs; baseline = the Operation's own started -> finished "
        "(the rest is the queue's share: claim, queue row, liveness lock)",
    )
    snap = data["snapshot"]
    yield Result(
        "snapshot job dump vs pg_dump -Fc",
        snap["job_dump_s"],
        "s",
        baseline=snap["plain_pg_dump_s"],
        ratio=snap["ratio"],
        goal="ratio <= 1.05",
        meets_goal=snap["ratio"] <= 1.05,
        note=f"{snap['rows']:,} rows; best of 3 alternating; progress reporting on (heartbeat 1 s)",
        extra=snap,
    )


def cleanup() -> None:
    for db in (CONSOLE_DB, SNAP_DB):
        common.drop_database(db)


def main() -> None:
    import run as bench_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--profile", action="store_true", help="cProfile the workers of the last throughput pair")
    opts = parser.parse_args()
    sizes = bench_run.QUICK if opts.quick else bench_run.FULL
    try:
        results = measure(sizes, profile=opts.profile)
    finally:
        if not opts.keep:
            cleanup()
    results["load_average_at_end"] = load_average()
    text = json.dumps(results, indent=2)
    (common.WORK_DIR / "jobs.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
