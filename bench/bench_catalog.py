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


def empty_catalog(target: str) -> None:
    """Forget everything the console knows of `target`, so the next sync is a real first sync."""
    from opsapp.models import Target
    from opsapp.services.catalog.store import prune_catalogs

    catalogs = list(Target.objects.filter(name=target).values_list("catalog_id", flat=True))
    Target.objects.filter(name=target).delete()
    prune_catalogs(catalogs)  # its script directory's catalog too, unless another target reads it


def stamp_heads(target: str) -> list[str]:
    """Write the scripts' heads into the target's alembic_version (as `alembic stamp heads` would,
    without building Alembic's map), so pages plan a real downgrade."""
    import psycopg

    from opsapp.models import Target

    heads = list(Target.objects.get(name=target).script_heads)
    db, _ = common.TARGETS[target]
    with psycopg.connect(common.database_url(db), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS alembic_version")
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        for head in heads:
            conn.execute("INSERT INTO alembic_version VALUES (%s)", (head,))
    return heads


def size_figures(n: int, target: str, *, walk_limit: int, rounds: int, profile: bool) -> tuple[list[Result], dict]:
    """First sync (fresh process, empty catalog, rows written) against Alembic's walk (fresh process)."""
    import compileall

    from opsapp.services.catalog.sync import sync_target

    _, folder = common.TARGETS[target]
    root = common.fresh_dir(folder)
    gen_s, (sd, revs, generator) = common.timed(lambda: generate(root, n))
    common.log(f"   generated {len(revs):,} revisions in {gen_s:.1f} s with {generator}")
    # Both sides start with compiled __pycache__, as a second `alembic history` would find it.
    compileall.compile_dir(str(sd.versions), quiet=1)
    label = f"{n:,} revisions"
    walks, syncs = [], []
    for _ in range(rounds):
        if n <= walk_limit:
            walks.append(common.run_child("walk", str(sd.ini)))
        empty_catalog(target)
        syncs.append(common.run_child("sync", target))
        if syncs[-1]["count"] != n:
            raise RuntimeError(f"first sync stored {syncs[-1]['count']} of {n} revisions")
    first = common.median([x["seconds"] for x in syncs])
    rss = max(x["max_rss_mb"] for x in syncs)
    raw = common.median([x["seconds"] for x in walks]) if walks else None
    walk_rss = max(x["max_rss_mb"] for x in walks) if walks else None
    results = []
    if raw is not None:
        ratio = first / raw
        goal_ratio = 0.3 if n >= 10_000 else None
        results.append(
            Result(
                f"catalog first sync, {label}",
                first * 1000,
                "ms",
                raw * 1000,
                ratio,
                f"ratio <= {goal_ratio}" if goal_ratio else "",
                (ratio <= goal_ratio) if goal_ratio else None,
                note=f"median of {rounds} fresh processes, empty catalog, all rows written; baseline = Alembic's "
                f"walk_revisions() in a fresh process (median of {len(walks)}); max RSS sync {rss:.0f} MB, "
                f"walk {walk_rss:.0f} MB",
                extra={"sync_runs": syncs, "walk_runs": walks},
            )
        )
    else:
        results.append(
            Result(
                f"catalog first sync, {label}",
                first * 1000,
                "ms",
                goal="<= 60 s" if n >= 50_000 else "",
                meets_goal=(first <= 60) if n >= 50_000 else None,
                note=f"median of {rounds} fresh processes, empty catalog; Alembic's walk not run above "
                f"{walk_limit:,} revisions (minutes; see docs/bench.md)",
                extra={"sync_runs": syncs},
            )
        )
    results.append(
        Result(
            f"catalog first sync max RSS, {label}",
            rss,
            "MB",
            walk_rss,
            rss / walk_rss if walk_rss else None,
            "<= 500 MB" if n >= 50_000 else "",
            (rss <= 500) if n >= 50_000 else None,
            note="peak resident memory of the whole sync process (interpreter, Django, every loaded script)",
        )
    )
    resync = common.median(_alternate({"resync": lambda: sync_target(target)}, 5)["resync"])
    results.append(
        Result(
            f"catalog re-sync unchanged, {label}",
            resync * 1000,
            "ms",
            raw * 1000 if raw else None,
            resync / raw if raw else None,
            "<= 5% of raw walk" if raw else "",
            (resync / raw <= 0.05) if raw else None,
        )
    )
    if profile and raw and first / raw > 0.3:
        empty_catalog(target)
        common.log("   profiling the first sync:\n" + profile_top(lambda: sync_target(target)))
    return results, {"n": n, "first_s": first, "walk_s": raw, "rss_mb": rss, "revs": revs}


def cold_page_figures(target: str, processes: int) -> list[Result]:
    """The first revision-page view of a fresh process (a new gunicorn worker), at the target's heads."""
    from django.urls import reverse

    from opsapp.models import Revision
    from opsapp.services.catalog.sync import sync_target

    users = common.ensure_users()
    stamp_heads(target)
    t = sync_target(target)
    n = Revision.objects.filter(catalog_id=t.catalog_id).count()
    # The lowest merge point: its preview reverts nearly the whole history (the worst case).
    merge = Revision.objects.filter(catalog_id=t.catalog_id, is_merge_point=True).order_by("position").first()
    detail = merge or Revision.objects.filter(catalog_id=t.catalog_id).order_by("position")[n // 2]
    url = reverse("admin:opsapp_revision_change", args=[detail.pk])
    runs = [common.run_child("page", url, users["admin"].username) for _ in range(processes)]
    if any(r["status"] != 200 for r in runs):
        raise RuntimeError(f"GET {url} in a fresh process answered {[r['status'] for r in runs]}")
    samples = [r["seconds"] for r in runs]
    p95 = common.percentile(samples, 95)
    goal = n >= 10_000
    return [
        Result(
            f"revision page, first view in a fresh process, p95, {n:,} revisions",
            p95 * 1000,
            "ms",
            goal="p95 <= 300 ms" if goal else "",
            meets_goal=(p95 <= 0.3) if goal else None,
            note=f"{processes} fresh processes, one GET each of {url} (downgrade preview from heads "
            f"{', '.join(t.current_heads)} to the lowest merge point); p50 {common.percentile(samples, 50) * 1000:.0f} ms",
            extra={"runs_ms": [x * 1000 for x in samples]},
        )
    ]


def page_figures(target: str, revs: list[str], requests: int) -> list[Result]:
    from django.urls import NoReverseMatch, reverse

    from opsapp.models import Revision, Target

    users = common.ensure_users()
    client = common.admin_client(users["admin"])
    t = Target.objects.get(name=target)
    n = Revision.objects.filter(catalog_id=t.catalog_id).count()
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
    merge = Revision.objects.filter(catalog_id=t.catalog_id, is_merge_point=True).order_by("position").first()
    prefix = (merge or Revision.objects.filter(catalog_id=t.catalog_id).first()).revision[:4]
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
    detail = merge or Revision.objects.filter(catalog_id=t.catalog_id).order_by("position")[n // 2]
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


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def run(sizes: dict, *, profile: bool = False) -> Iterable[Result]:
    common.recreate_database(common.bench_db("cat"))
    targets = [name for name in common.TARGETS if name.startswith("bench_cat_")]
    scale = []
    for n, target in zip(sizes["catalog_sizes"], targets, strict=False):
        rounds = 3 if n <= 10_000 else 1
        results, point = size_figures(n, target, walk_limit=sizes["walk_limit"], rounds=rounds, profile=profile)
        yield from results
        scale.append(point)
    sync_exp = common.growth_exponent([p["n"] for p in scale], [p["first_s"] for p in scale])
    walked = [p for p in scale if p["walk_s"]]
    walk_exp = common.growth_exponent([p["n"] for p in walked], [p["walk_s"] for p in walked])
    table = ", ".join(
        f"{p['n']:,}: sync {p['first_s']:.2f} s / walk {_seconds(p['walk_s'])} / {p['rss_mb']:.0f} MB" for p in scale
    )
    yield Result(
        "catalog first sync growth exponent (time ~ n^k)",
        sync_exp,
        "k",
        walk_exp,
        note=f"least squares over log-log; baseline = the same fit for Alembic's walk; {table}",
        extra={"points": [{k: v for k, v in p.items() if k != "revs"} for p in scale]},
    )
    # The cold page at every size: its goal is set at 10,000 revisions, and each size shows its growth.
    # Largest first, so the warm pages below run on the same catalog rows as its cold page.
    for index in reversed(range(len(scale))):
        target = targets[index]
        yield from common.guarded(
            f"cold revision page {target}", lambda target=target: cold_page_figures(target, sizes["cold_processes"])
        )
    largest, target = scale[-1], targets[len(scale) - 1]
    yield from common.guarded("revision pages", lambda: page_figures(target, largest["revs"], sizes["page_requests"]))


def cleanup() -> None:
    common.drop_database(common.bench_db("cat"))
