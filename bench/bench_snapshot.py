"""Snapshot figures: take_snapshot of a ~1 GB database against plain `pg_dump -Fc`.

The console's phases are timed by wrapping (not replacing) the functions
take_snapshot calls: the pg_dump stream (with its inline SHA-256 and fsync),
the checksum re-read and the `pg_restore --list` read-back of verification.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import common
from common import Result

from opsapp.demo.history_gen import ScriptDir

DB = common.bench_db("snap")
TARGET = "bench_snap"


def build_database(size_mb: int) -> tuple[int, float]:
    """A target at one Alembic revision holding ~size_mb of data; returns (bytes, seconds)."""
    import psycopg
    from alembic import command
    from alembic.config import Config

    url = common.recreate_database(DB)
    sd = ScriptDir(common.fresh_dir("snap_scripts"), url.replace("postgresql://", "postgresql+psycopg://"))
    sd.add("5a0000000001", None, message="baseline schema")
    command.upgrade(Config(str(sd.ini)), "head")
    # ~178 bytes of database (heap + indexes + accounts) per `events` row (measured: 1 GB ~ 6M rows).
    rows = int(size_mb * 1024 * 1024 / 178)
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(
            "CREATE TABLE accounts AS SELECT g AS id, 'user' || g || '@example.test' AS email, "
            "md5(g::text) AS api_key, now() - g * interval '1 minute' AS created_at "
            f"FROM generate_series(1, {max(1000, rows // 10)}) g"
        )
        conn.execute("ALTER TABLE accounts ADD PRIMARY KEY (id)")
        conn.execute(
            "CREATE TABLE events AS SELECT g AS id, (g % 100000) + 1 AS account_id, "
            "(ARRAY['order','payment','refund','login'])[g % 4 + 1] AS kind, (g * 37) % 100000 AS amount_cents, "
            "md5(g::text) || md5((g * 7)::text) AS payload, now() - g * interval '1 second' AS created_at "
            f"FROM generate_series(1, {rows}) g"
        )
        conn.execute("ALTER TABLE events ADD PRIMARY KEY (id)")
        conn.execute("CREATE INDEX events_account ON events (account_id)")
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return size, time.perf_counter() - start


@contextmanager
def phase_timers(targets: dict[str, tuple[object, str]]):
    """Wrap module functions to accumulate their wall time (the originals still run)."""
    spent: dict[str, float] = {key: 0.0 for key in targets}
    originals = {}
    for key, (module, attr) in targets.items():
        original = getattr(module, attr)
        originals[key] = (module, attr, original)

        def wrapper(*args, __orig=original, __key=key, **kwargs):
            start = time.perf_counter()
            try:
                return __orig(*args, **kwargs)
            finally:
                spent[__key] += time.perf_counter() - start

        setattr(module, attr, wrapper)
    try:
        yield spent
    finally:
        for module, attr, original in originals.values():
            setattr(module, attr, original)


def plain_pg_dump(dest: Path) -> float:
    """What a user would run: pg_dump --format=custom to a file (pg_dump fsyncs it by default)."""
    url = common.database_url(DB)
    start = time.perf_counter()
    subprocess.run(["pg_dump", "--format=custom", "--no-password", f"--file={dest}", f"--dbname={url}"], check=True)
    return time.perf_counter() - start


def take_once(actor) -> tuple[float, dict[str, float], object]:
    from opsapp.services.snapshots import lifecycle as snapshots
    from opsapp.services.snapshots import postgres as snapshot_pg

    watched: dict[str, tuple[object, str]] = {
        "dump": (snapshot_pg, "dump"),
        "verify": (snapshots, "verify_snapshot"),
        "checksum": (snapshots, "sha256_file"),
        "readback": (snapshot_pg, "check_archive"),
    }
    with phase_timers(watched) as spent:
        start = time.perf_counter()
        snap = snapshots.take_snapshot(TARGET, actor=actor)
        total = time.perf_counter() - start
    return total, dict(spent), snap


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    from opsapp.services.actors import Actor
    from opsapp.services.snapshots.lifecycle import snapshot_path

    size, build_s = build_database(sizes["snapshot_mb"])
    common.log(f"   built a {size / 1e6:.0f} MB database in {build_s:.0f} s")
    actor = Actor.cli("bench")
    out_dir = common.WORK_DIR / "plain_dumps"
    out_dir.mkdir(exist_ok=True)
    rounds = max(3, sizes.get("snapshot_rounds", 3))
    plain: list[float] = []
    takes: list[tuple[float, dict[str, float]]] = []
    plain_size = 0
    for i in range(rounds):
        dest = out_dir / f"plain-{i}.dump"
        dest.unlink(missing_ok=True)
        plain.append(plain_pg_dump(dest))
        plain_size = dest.stat().st_size
        dest.unlink()
        total, spent, snap = take_once(actor)
        takes.append((total, spent))
        snap_size = snap.size
        snapshot_path(snap).unlink(missing_ok=True)  # keep the disk tidy; the row stays
    base = common.median(plain)
    total = common.median([t[0] for t in takes])
    spent = {key: common.median([t[1][key] for t in takes]) for key in takes[0][1]}
    dump_ratio = spent["dump"] / base
    mb = size / 1e6
    yield Result(
        f"snapshot dump phase, {mb:,.0f} MB database",
        spent["dump"],
        "s",
        base,
        dump_ratio,
        "ratio <= 1.05",
        dump_ratio <= 1.05,
        note=f"pg_dump --format=custom streamed through SHA-256 + fsync; archive {snap_size / 1e6:.0f} MB "
        f"(plain {plain_size / 1e6:.0f} MB); {rounds} alternating rounds, median baseline",
        extra={"plain_runs_s": plain, "take_runs": [{"total": t, **s} for t, s in takes], "db_bytes": size},
    )
    yield Result(
        "snapshot checksum (re-read, in verification)",
        spent["checksum"],
        "s",
        note="verify_snapshot re-reads the file and compares its SHA-256",
    )
    yield Result(
        "snapshot read-back (pg_restore --list, in verification)",
        spent["readback"],
        "s",
    )
    yield Result("snapshot verification total", spent["verify"], "s")
    yield Result(
        f"take_snapshot end to end, {mb:,.0f} MB database",
        total,
        "s",
        base,
        total / base,
        note=f"dump + checksum + verification + rows and audit; median of {rounds} alternating rounds "
        "against pg_dump -Fc of the same database",
        extra={"take_runs_s": [t[0] for t in takes], "plain_runs_s": plain},
    )


def cleanup() -> None:
    common.drop_database(DB)
    for path in (common.WORK_DIR / "plain_dumps").glob("*.dump"):
        os.unlink(path)
