"""Audit-log figures at a million events: admin pages, CSV export, chain verification, appends.

The events are generated with a correct keyed chain (hashes and MACs computed
in Python by the console's own functions, with the configured audit key) and
loaded with COPY: the append-only triggers only refuse UPDATE, DELETE and
TRUNCATE.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import common
from common import Result

TABLE = "opsapp_auditevent"
ACTIONS = (
    ("heads_changed", "info", 30),
    ("snapshot_taken", "success", 20),
    ("snapshot_verified", "success", 20),
    ("snapshot_pruned", "success", 8),
    ("rollback_requested", "success", 5),
    ("code_issued", "success", 5),
    ("rollback_refused", "refused", 4),
    ("code_rejected", "refused", 2),
    ("rollback_started", "info", 2),
    ("rollback_succeeded", "success", 2),
    ("rollback_failed", "failure", 1),
    ("snapshot_failed", "failure", 1),
)
TARGET_NAMES = ("shop", "billing", "search", "warehouse", "crm")
ACTORS = ("cron", "olga", "anton", "aude", "cli:deploy", "mira", "sam")


def _copy_escape(value: object) -> str:
    if value is None:
        return "\\N"
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _hasher():
    """(hash, MAC, key id) of one event's HASHED_FIELDS values, as append_event computes them."""
    from opsapp.services.audit import chain as audit
    from opsapp.services.audit.keys import current_mac_key

    key = current_mac_key()
    fields = audit.HASHED_FIELDS

    def hash_values(values):
        event_hash = audit.compute_hash({**dict(zip(fields, values, strict=True)), "key_id": key.key_id})
        return event_hash, audit.compute_mac(key.secret, event_hash), key.key_id

    return hash_values


def generate_events(n: int) -> float:
    """Append `n` chained events after the current head with COPY; return seconds spent."""
    import psycopg

    from opsapp.services.audit.chain import GENESIS_HASH, HASHED_FIELDS

    hash_values = _hasher()
    rng = random.Random(4)
    weights = [w for _, _, w in ACTIONS]
    columns = (*HASHED_FIELDS, "hash", "key_id", "mac")
    url = common.database_url(common.CONSOLE_DB)
    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        head = conn.execute(f"SELECT seq, hash FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = head if head else (0, GENESIS_HASH)
        # Load without the secondary indexes, then rebuild them: minutes faster, same end state.
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
            (TABLE, TABLE),
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        base = datetime(2025, 1, 1, tzinfo=UTC)
        step = timedelta(seconds=30)
        actions = rng.choices(range(len(ACTIONS)), weights=weights, k=n)
        with conn.cursor() as cur, cur.copy(f"COPY {TABLE} ({', '.join(columns)}) FROM STDIN") as copy:
            lines: list[str] = []
            for i in range(n):
                seq += 1
                action, outcome, _ = ACTIONS[actions[i]]
                target = TARGET_NAMES[i % 5]
                actor = ACTORS[(i * 7) % len(ACTORS)]
                request_id = (i // 40) if action.startswith(("rollback", "code")) else None
                snapshot_id = (i // 10) if action.startswith("snapshot") else None
                created = (base + step * i + timedelta(microseconds=i % 997)).isoformat(timespec="microseconds")
                detail = {"n": i % 1000, "steps": ["a1b2c3", "d4e5f6"]} if request_id else {"n": i % 1000}
                values = (
                    seq,
                    created,
                    None if actor == "cron" else 1 + (i % 6),
                    actor,
                    action,
                    outcome,
                    target,
                    request_id,
                    snapshot_id,
                    "d4e5f6a7b8c9" if request_id else "",
                    "a1b2c3d4e5f6" if request_id else "",
                    f"{action.replace('_', ' ')} on {target} (event {seq})",
                    detail,
                    None if actor == "cron" else f"10.0.{i % 200}.{i % 250 + 1}",
                    "" if actor == "cron" else "Mozilla/5.0 (X11; Linux x86_64) bench",
                    prev,
                )
                prev, mac, key_id = hash_values(values)
                row = list(values)
                row[12] = json.dumps(detail, separators=(",", ":"))
                row += [prev, key_id, mac]
                lines.append("\t".join(_copy_escape(v) for v in row))
                if len(lines) >= 20_000:
                    copy.write("\n".join(lines) + "\n")
                    lines.clear()
            if lines:
                copy.write("\n".join(lines) + "\n")
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            conn.execute(definition)
        # What autovacuum does to a table that grew by a million rows (this bench server runs with autovacuum
        # off): statistics, and the visibility map that lets a filtered count read only the index.
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    return time.perf_counter() - start


def page_figures(requests: int, n: int) -> list[Result]:
    from django.urls import reverse

    users = common.ensure_users()
    client = common.admin_client(users["admin"])
    url = reverse("admin:opsapp_auditevent_changelist")
    results: list[Result] = []

    def page(name: str, page_url: str, goal_ms: float | None = 200) -> None:
        timing = common.time_pages(client, page_url, requests=requests)
        results.append(
            Result(f"{name} p50, {n:,} events", timing["p50_ms"], "ms", note=f"GET {page_url}", extra=timing)
        )
        results.append(
            Result(
                f"{name} p95, {n:,} events",
                timing["p95_ms"],
                "ms",
                goal=f"p95 <= {goal_ms:.0f} ms" if goal_ms else "",
                meets_goal=timing["p95_ms"] <= goal_ms if goal_ms else None,
                extra=timing,
            )
        )

    page("audit changelist", url)
    page("filtered audit changelist (outcome)", url + "?outcome__exact=refused")
    page(
        "filtered audit changelist (target, action, month)",
        url + "?target_name=billing&action__exact=snapshot_failed&created_at__year=2025&created_at__month=1",
    )
    # The auditor's search (icontains over message and revisions, served by the pg_trgm index of
    # migration 0017): a rare phrase, and a single common word (matches a fifth of the table).
    page("audit search changelist", url + "?q=warehouse+event+4242")
    page("audit search changelist (common word)", url + "?q=billing")
    return results


class _CountingSink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def export_figures(n: int) -> list[Result]:
    import psycopg

    from opsapp.models import AuditEvent
    from opsapp.services.audit import export as audit_export
    from opsapp.services.audit.chain import EXPORT_FIELDS

    total = AuditEvent.objects.count()
    qs = audit_export.filter_events()
    sink = _CountingSink()
    with common.RssPeak() as mem:
        elapsed, _ = common.timed(lambda: audit_export.export_csv(sink, qs))
    # The baseline: the same columns, as stored (no formatting), straight out of COPY.
    cols = ", ".join(EXPORT_FIELDS)
    with psycopg.connect(common.database_url(common.CONSOLE_DB)) as conn, conn.cursor() as cur:
        start = time.perf_counter()
        raw_bytes = 0
        with cur.copy(f"COPY (SELECT {cols} FROM {TABLE} ORDER BY seq) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
            for chunk in copy:
                raw_bytes += len(chunk)
        raw_elapsed = time.perf_counter() - start
    rate, raw_rate = total / elapsed, total / raw_elapsed
    return [
        Result(
            f"CSV export, {total:,} events",
            rate,
            "rows/s",
            raw_rate,
            rate / raw_rate,
            ">= 0.5x COPY",
            rate / raw_rate >= 0.5,
            note=f"{elapsed:.1f} s, {sink.bytes / 1e6:.0f} MB; baseline = psql-style COPY (SELECT <the same columns> "
            f"ORDER BY seq) TO STDOUT CSV, {raw_bytes / 1e6:.0f} MB",
        ),
        Result(
            f"CSV export peak memory (RSS growth), {total:,} events",
            mem.delta_mb,
            "MB",
            note=f"VmHWM {mem.peak_kb / 1024:.0f} MB vs RSS {mem.start_kb / 1024:.0f} MB before the export "
            "(0 = the export fit in memory the process already held)",
        ),
        heap_figure(audit_export, qs),
    ]


def heap_figure(audit_export, qs) -> Result:
    """Python heap peak of an export (tracemalloc slows it down, so on the first 100,000 events only)."""
    import tracemalloc

    subset = qs.filter(seq__lte=100_000)
    rows = subset.count()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        audit_export.export_csv(_CountingSink(), subset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Result(
        f"CSV export Python heap peak, {rows:,} events",
        peak / 1e6,
        "MB",
        note="tracemalloc peak of allocations made during the export; flat in the number of events when streaming",
    )


def _writer(per_writer: int, barrier, queue) -> None:
    from django.db import connections

    from opsapp.services.actors import Actor
    from opsapp.services.audit.log import append_event

    actor = Actor(username="bench-writer", client_ip="10.9.8.7")
    append_event(action="stamp", outcome="info", actor=actor, target="bench", message="warm-up")
    barrier.wait()
    start = time.perf_counter()
    for i in range(per_writer):
        append_event(
            action="stamp", outcome="info", actor=actor, target="bench", message=f"append {i}", detail={"i": i}
        )
    queue.put(time.perf_counter() - start)
    connections.close_all()


def _concurrent_appends(writers: int, per_writer: int) -> float:
    from django.db import connections

    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(writers + 1)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(per_writer, barrier, queue)) for _ in range(writers)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"an append writer failed (exit codes {[p.exitcode for p in procs]})")
    return writers * per_writer / wall


def append_figures(per_writer: int) -> list[Result]:
    single = _concurrent_appends(1, per_writer)
    four = _concurrent_appends(4, per_writer)
    return [
        Result(
            "audit append, 4 concurrent writers",
            four,
            "events/s",
            single,
            four / single,
            note=f"{per_writer} append_event calls per writer process; baseline = 1 writer",
        )
    ]


def _plain_read() -> tuple[int, float]:
    """(rows, seconds) of reading every event through a psycopg server-side cursor, nothing else done."""
    import psycopg

    with psycopg.connect(common.database_url(common.CONSOLE_DB)) as conn:
        start = time.perf_counter()
        rows = 0
        with conn.cursor(name="bench_read") as cur:
            cur.itersize = 5000
            cur.execute(f"SELECT * FROM {TABLE} ORDER BY seq")
            for _ in cur:
                rows += 1
        return rows, time.perf_counter() - start


def verify_figures(rounds: int = 2) -> list[Result]:
    from opsapp.services.audit.verify import verify_chain

    # Alternate the two, best of `rounds` each: on a shared machine one slow moment should not decide.
    verify_s, read_s = [], []
    for _ in range(rounds):
        elapsed, result = common.timed(verify_chain)
        if not result.ok:
            raise RuntimeError(f"verify_chain found a problem in the generated chain: {result.message}")
        verify_s.append(elapsed)
        rows, seconds = _plain_read()
        read_s.append(seconds)
    rate, raw_rate = result.checked / min(verify_s), rows / min(read_s)
    return [
        Result(
            f"chain verification, {result.checked:,} events",
            rate,
            "events/s",
            raw_rate,
            rate / raw_rate,
            ">= 100,000 events/s, MACs included",
            rate >= 100_000,
            note=f"best of {rounds}: {min(verify_s):.1f} s (all: {', '.join(f'{s:.1f}' for s in verify_s)} s), every "
            "event keyed (SHA-256 + HMAC-SHA256), read as one COPY stream; baseline = reading the same rows without "
            f"hashing (psycopg server-side cursor, SELECT *, best of {rounds}: "
            f"{', '.join(f'{s:.1f}' for s in read_s)} s)",
        )
    ]


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    n = sizes["audit_events"]
    gen_s = generate_events(n)
    common.log(f"   generated {n:,} chained events in {gen_s:.0f} s")
    yield from common.guarded("audit pages", lambda: page_figures(sizes["audit_page_requests"], n))
    yield from common.guarded("CSV export", lambda: export_figures(n))
    yield from common.guarded("audit append", lambda: append_figures(sizes["append_per_writer"]))
    results = common.guarded("chain verification", verify_figures)
    if profile and results and results[0].meets_goal is False:
        import bench_catalog

        from opsapp.services.audit.verify import verify_chain

        common.log("   profiling verify_chain:\n" + bench_catalog.profile_top(verify_chain))
    yield from results
