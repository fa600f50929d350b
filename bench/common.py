"""Shared plumbing for the benchmark: environment, databases, timing, results.

Nothing here knows about one figure in particular. `configure_environment`
must run before Django is imported anywhere (it sets the settings the bench
relies on: its own console database, snapshot directory and targets).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
RESULTS_DIR = BENCH_DIR / "results"
PG_SERVER = os.environ.get("OPS_BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
# Overridable so two people (or helpers) can bench on one server without dropping each other's database.
CONSOLE_DB = os.environ.get("OPS_BENCH_CONSOLE_DB", "ops_bench")


def bench_db(suffix: str) -> str:
    """A throwaway database named after the console database, so benches with different
    OPS_BENCH_CONSOLE_DB values never create or drop each other's databases."""
    return f"{CONSOLE_DB}_{suffix}"


# Target name -> (database name, script directory under bench/work/).
TARGETS: dict[str, tuple[str, str]] = {
    # one catalog target per size of the scaling table, smallest first
    "bench_cat_a": (bench_db("cat"), "catalog_a"),
    "bench_cat_b": (bench_db("cat"), "catalog_b"),
    "bench_cat_c": (bench_db("cat"), "catalog_c"),
    "bench_start": (bench_db("start"), "start_scripts"),
    "bench_snap": (bench_db("snap"), "snap_scripts"),
    "bench_down": (bench_db("down"), "down_scripts"),
    "bench_reh": (bench_db("reh"), "reh_scripts"),
}


# ------------------------------------------------------------------ results
@dataclass
class Result:
    """One figure of the table; `meets_goal` is None when the figure has no goal."""

    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    goal: str = ""
    meets_goal: bool | None = None
    note: str = ""
    section: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not data["extra"]:
            data.pop("extra")
        return data


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a p95 is a real sample)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """`with stopwatch() as elapsed: ...; elapsed()` -> seconds (perf_counter)."""
    start = time.perf_counter()
    end: list[float] = []

    def elapsed() -> float:
        return (end[0] if end else time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end.append(time.perf_counter())


def guarded(label: str, fn: Callable[[], list[Result]]) -> list[Result]:
    """Run one group of figures; a failure becomes a row (with the error) instead of ending the section."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the other figures of the section still count
        import traceback

        log(f"   {label} FAILED: {exc!r}\n{traceback.format_exc()}")
        return [Result(f"{label}: failed", None, "", note=f"{type(exc).__name__}: {str(exc)[:300]}")]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ environment
def database_url(db: str, scheme: str = "postgresql") -> str:
    return f"{PG_SERVER.replace('postgresql://', scheme + '://', 1)}/{db}"


def configure_environment() -> None:
    """Point Django at the bench's own console DB, snapshot dir and targets (before django.setup())."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DEBUG"] = "1"
    os.environ["OPS_IGNORE_DOTENV"] = "1"
    os.environ["DATABASE_URL"] = database_url(CONSOLE_DB, "postgres")
    os.environ["OPS_SNAPSHOT_DIR"] = str(WORK_DIR / "snapshots")
    os.environ["OPS_VAR_DIR"] = str(WORK_DIR / "var")
    # Codes go to Django's in-memory outbox so the downgrade figure can read them.
    os.environ["EMAIL_URL"] = "memorymail://"
    os.environ["AXES_ENABLED"] = "0"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["ALLOWED_HOSTS"] = "testserver,127.0.0.1,localhost"
    os.environ["OPS_TARGETS"] = ",".join(TARGETS)
    for name, (db, scripts) in TARGETS.items():
        os.environ[f"OPS_TARGET_{name.upper()}_URL"] = database_url(db)
        os.environ[f"OPS_TARGET_{name.upper()}_ALEMBIC_INI"] = str(WORK_DIR / scripts / "alembic.ini")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    WORK_DIR.mkdir(exist_ok=True)
    (WORK_DIR / "snapshots").mkdir(exist_ok=True)
    (WORK_DIR / "var").mkdir(exist_ok=True)


def admin_conn():
    import psycopg

    return psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True)


def recreate_database(db: str) -> str:
    with admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    return database_url(db)


def drop_database(db: str) -> None:
    with admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def run_child(verb: str, *args: str, timeout: float = 3600) -> dict[str, Any]:
    """Run bench/child.py in a fresh interpreter (same environment); its JSON result."""
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "child.py"), verb, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {verb} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def process_seconds(argv: list[str], *, env: dict[str, str] | None = None) -> float:
    """Wall time of a whole process, start-up included (what cron pays)."""
    import subprocess

    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def growth_exponent(sizes: list[float], seconds: list[float]) -> float | None:
    """Least-squares slope of log(seconds) over log(size): 1 is linear growth, 2 quadratic."""
    import math

    points = [(math.log(n), math.log(t)) for n, t in zip(sizes, seconds, strict=True) if t and t > 0]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def fresh_dir(name: str) -> Path:
    path = WORK_DIR / name
    if path.exists():
        shutil.rmtree(path)
    return path


def machine_info() -> dict[str, Any]:
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    pg_version = ""
    try:
        with admin_conn() as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # noqa: BLE001 - the table is still useful without it
        pg_version = f"unknown ({exc})"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "postgresql": pg_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


# ------------------------------------------------------------------ Django helpers
def ensure_users() -> dict[str, Any]:
    """Superuser, operator and approver personas in the bench console DB."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    User = get_user_model()
    users: dict[str, Any] = {}
    admin = User.objects.filter(username="bench_admin").first() or User.objects.create_superuser(
        "bench_admin", "bench_admin@example.test", "pw-bench-admin"
    )
    users["admin"] = admin
    for key, username, group in (("operator", "bench_op", "operators"), ("approver", "bench_appr", "approvers")):
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create_user(username, f"{username}@example.test", "pw-" + username, is_staff=True)
            group_obj = Group.objects.filter(name=group).first()
            if group_obj is not None:
                user.groups.add(group_obj)
        users[key] = user
    return users


def admin_client(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def time_pages(client, url: str, *, requests: int, warmup: int = 3) -> dict[str, Any]:
    """Server time (Django test client, in-process) of GET url: p50/p95 over `requests`."""
    status = None
    for _ in range(warmup):
        response = client.get(url)
        status = response.status_code
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}")
    samples = []
    size = 0
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(url)
        content = response.content
        samples.append(time.perf_counter() - start)
        size = len(content)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}")
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p95_ms": percentile(samples, 95) * 1000,
        "max_ms": max(samples) * 1000,
        "bytes": size,
        "n": requests,
    }


def find_url(*, contains: str, model: str | None = None) -> list[str]:
    """Names of admin URL patterns containing `contains` (custom admin pages have no fixed contract)."""
    from django.contrib import admin

    names = []
    for pattern in admin.site.get_urls():
        names.extend(_pattern_names(pattern))
    return [n for n in names if contains in n and (model is None or model in n)]


def _pattern_names(pattern) -> list[str]:
    if hasattr(pattern, "url_patterns"):
        result = []
        for sub in pattern.url_patterns:
            result.extend(_pattern_names(sub))
        return result
    return [pattern.name] if getattr(pattern, "name", None) else []


class RssPeak:
    """Peak resident memory during a block (Linux): resets VmHWM via clear_refs, else samples."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self.start_kb = 0

    @staticmethod
    def _status(field_name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> RssPeak:
        import gc

        gc.collect()
        self.start_kb = self._status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_kb = self._status("VmHWM")

    @property
    def delta_mb(self) -> float:
        return max(0, self.peak_kb - self.start_kb) / 1024
