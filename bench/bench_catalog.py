"""Catalog figures: sync vs Alembic's own walk, re-sync, and admin page times.

Script directories come from `opsapp.demo.history_gen.generate_history`
(the generator the catalog tests use), written by a small ScriptDir-like
writer so the files look like `alembic revision` output.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Iterable
from pathlib import Path

import common
from common import Result

from opsapp.demo.history_gen import ScriptDir, generate_history


def generate(root: Path, n: int) -> tuple[ScriptDir, list[str], str]:
    sd = ScriptDir(root)
    return sd, list(generate_history(sd, n, max(2, n // 50), 8)), "history_gen.generate_history"


def raw_walk(ini: Path) -> int:
    """What a user would run: Alembic's ScriptDirectory walk of the same directory."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    return sum(1 for _ in ScriptDirectory.from_config(Config(str(ini))).walk_revisions())


def profile_top(fn, limit: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def _alternate(fns: dict[str, object], rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            elapsed, _ = common.timed(fn)
            samples[key].append(elapsed)
    return samples


def sync_figures(n: int, target: str, folder: str, *, rounds: int, profile: bool) -> tuple[list[Result], list[str]]:
    from opsapp.models import Revision
    from opsapp.services.catalog.sync import sync_target

    root = common.fresh_dir(folder)
    gen_s, (sd, revs, generator) = common.timed(lambda: generate(root, n))
    common.log(f"   generated {len(revs)} revisions in {gen_s:.1f} s with {generator}")
    walked = raw_walk(sd.ini)  # warm: compiles __pycache__, as a second `alembic history` would find it
    first_s, t = common.timed(lambda: sync_target(target, force=True))
    synced = Revision.objects.filter(target=t).count()
    if synced != walked:
        raise RuntimeError(f"sync stored {synced} revisions, the raw walk saw {walked}")
    samples = _alternate({"raw": lambda: raw_walk(sd.ini), "sync": lambda: sync_target(target, force=True)}, rounds)
    raw = common.median(samples["raw"])
    full = common.median(samples["sync"])
    resync_samples = _alternate({"resync": lambda: sync_target(target)}, 5)["resync"]
    resync = common.median(resync_samples)
    label = f"{n:,} revisions"
    full_ratio = full / raw
    results = [
        Result(
            f"catalog full sync, {label}",
            full * 1000,
            "ms",
            raw * 1000,
            full_ratio,
            "ratio <= 1.3",
            full_ratio <= 1.3,
            note=f"median of {rounds}; first sync into an empty catalog {first_s * 1000:.0f} ms; baseline = "
            "ScriptDirectory.from_config(cfg).walk_revisions()",
        ),
        Result(
            f"catalog re-sync unchanged, {label}",
            resync * 1000,
            "ms",
            raw * 1000,
            resync / raw,
            "<= 5% of raw walk",
            resync / raw <= 0.05,
        ),
    ]
    if profile and full_ratio > 1.3:
        common.log("   profiling sync_target(force=True):\n" + profile_top(lambda: sync_target(target, force=True)))
    if profile and resync / raw > 0.05:
        common.log("   profiling sync_target() unchanged:\n" + profile_top(lambda: sync_target(target), limit=40))
    return results, revs


def page_figures(target: str, revs: list[str], requests: int) -> list[Result]:
    from django.urls import NoReverseMatch, reverse

    from opsapp.models import Revision, Target

    users = common.ensure_users()
    client = common.admin_client(users["admin"])
    t = Target.objects.get(name=target)
    n = Revision.objects.filter(target=t).count()
    results: list[Result] = []

    def page(name: str, url: str, goal_ms: float | None) -> None:
        timing = common.time_pages(client, url, requests=requests)
        ok = None if goal_ms is None else timing["p95_ms"] <= goal_ms
        goal = f"p95 <= {goal_ms:.0f} ms" if goal_ms else ""
        results.append(Result(f"{name} p50, {n:,} revisions", timing["p50_ms"], "ms", note=f"GET {url}", extra=timing))
        results.append(
            Result(f"{name} p95, {n:,} revisions", timing["p95_ms"], "ms", goal=goal, meets_goal=ok, extra=timing)
        )

    changelist = reverse("admin:opsapp_revision_changelist")
    page("revision changelist", changelist, 150)
    merge = Revision.objects.filter(target=t, is_merge_point=True).order_by("position").first()
    prefix = (merge or Revision.objects.filter(target=t).first()).revision[:4]
    candidates = [
        f"?target__id__exact={t.pk}&is_merge_point__exact=1",
        f"?target__id__exact={t.pk}&is_head__exact=1",
        f"?target__id__exact={t.pk}",
        f"?q={prefix}",
    ]
    for query in candidates:
        response = client.get(changelist + query)
        if response.status_code == 200 and "e=1" not in response.get("Location", ""):
            page("filtered revision changelist", changelist + query, 150)
            break
    page("searched revision changelist", changelist + f"?target__id__exact={t.pk}&q={prefix}", 150)
    detail = merge or Revision.objects.filter(target=t).order_by("position")[n // 2]
    page("revision detail", reverse("admin:opsapp_revision_change", args=[detail.pk]), None)
    graph_names = common.find_url(contains="graph")
    graph_url = None
    for name in graph_names:
        for args in ([t.pk], [t.name], []):
            try:
                graph_url = reverse(f"admin:{name}", args=args)
                break
            except NoReverseMatch:
                continue
        if graph_url:
            break
    if graph_url:
        query = "" if "?" in graph_url or str(t.pk) in graph_url or t.name in graph_url else f"?target={t.name}"
        page("revision graph page", graph_url + query, None)
    else:
        results.append(Result("revision graph page", None, "ms", note="no admin URL named *graph* found"))
    return results


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    common.recreate_database("ops_bench_cat")
    small, large = sizes["catalog_sizes"]
    results, _ = sync_figures(small, "bench_cat_small", "catalog_small", rounds=3, profile=profile)
    yield from results
    results, revs = sync_figures(
        large, "bench_cat_large", "catalog_large", rounds=3 if large <= 1000 else 2, profile=profile
    )
    yield from results
    yield from common.guarded("revision pages", lambda: page_figures("bench_cat_large", revs, sizes["page_requests"]))


def cleanup() -> None:
    common.drop_database("ops_bench_cat")
