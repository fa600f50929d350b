"""One catalog per script directory: shared rows, per-target positions, and migration 0017 from per-target rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from opsapp.models import Revision, ScriptCatalog, Target
from opsapp.services.catalog import planner
from opsapp.services.catalog.load import load_catalog, open_script_directory
from opsapp.services.catalog.store import Graph, facts_fingerprint, position_of, revisions_of
from opsapp.services.catalog.sync import script_fingerprint, sync_all, sync_target
from opsapp.services.errors import RevisionResolutionError
from opsapp.targets import get_target
from tests.conftest import ScriptDir, pg_query, repo_path
from tests.histories import generate_history, run_alembic

BEFORE = ("opsapp", "0016_audit_search_trigram")
AFTER = ("opsapp", "0017_script_catalog")


@pytest.fixture(autouse=True)
def _only_our_targets(settings):
    settings.OPS_TARGETS = {}


def second_ini(sd: ScriptDir, tmp_path: Path) -> Path:
    """Another alembic.ini naming the same script location (a second configuration of one directory)."""
    other = tmp_path / "other.ini"
    other.write_text(sd.ini.read_text().replace("%(here)s", str(sd.root), 1))
    return other


# ------------------------------------------------------------------ sharing
@pytest.mark.django_db
def test_two_targets_on_one_script_directory_store_one_set_of_rows(
    branchy_scripts, pg_database_factory, configure_target
):
    first = configure_target("first", pg_database_factory(), branchy_scripts.ini)
    second = configure_target("second", pg_database_factory(), branchy_scripts.ini)
    run_alembic(second, "upgrade", "g7")

    synced = sync_all()

    assert ScriptCatalog.objects.count() == 1
    assert Revision.objects.count() == 9
    assert synced[0].catalog_id == synced[1].catalog_id
    # The graph is shared, where each database stands is not.
    assert synced[1].catalog_reread is False
    assert position_of(synced[0]) == (set(), set())
    applied, current = position_of(synced[1])
    assert current == {"g7"} and applied == {"a1", "b2", "c3", "d4", "e5", "f6", "g7"}
    assert (synced[0].state, synced[1].state) == ("empty", "multiple_heads")
    assert not any(row.applied for row in revisions_of(Target.objects.get(name=first)))


@pytest.mark.django_db
def test_a_target_on_a_different_script_directory_gets_its_own_catalog(
    branchy_scripts, script_dir_factory, pg_database_factory, configure_target
):
    other = script_dir_factory()
    other.add("z1", None)
    configure_target("branchy", pg_database_factory(), branchy_scripts.ini)
    configure_target("other", pg_database_factory(), other.ini)

    a, b = sync_all()

    assert a.catalog_id != b.catalog_id and ScriptCatalog.objects.count() == 2
    assert sorted(Revision.objects.filter(catalog_id=b.catalog_id).values_list("revision", flat=True)) == ["z1"]
    assert Revision.objects.filter(catalog_id=a.catalog_id).count() == 9


@pytest.mark.django_db
def test_a_directory_that_changes_under_one_of_two_configurations_moves_both_without_losing_rows(
    pg_database_factory, script_dir_factory, configure_target, tmp_path
):
    sd = script_dir_factory()
    sd.add("r1", None)
    configure_target("one", pg_database_factory(), sd.ini)
    configure_target("two", pg_database_factory(), second_ini(sd, tmp_path))
    one, two = sync_all()
    assert ScriptCatalog.objects.count() == 1 and one.catalog_id == two.catalog_id

    sd.add("r2", "r1")
    one = sync_target("one")
    # Read through two configurations: `one` gets a catalog of its own, `two` keeps its rows until it syncs.
    assert one.catalog_id != two.catalog_id
    assert sorted(r.revision for r in revisions_of(Target.objects.get(name="two"))) == ["r1"]
    two = sync_target("two")
    assert two.catalog_id == one.catalog_id
    assert ScriptCatalog.objects.count() == 1  # the old catalog, read by nobody, is pruned
    assert sorted(Revision.objects.values_list("revision", flat=True)) == ["r1", "r2"]


# ------------------------------------------------------------------ migration 0017
def _old_rows(loaded, heads: list[str]) -> list[dict]:
    graph = Graph.from_rows(loaded.rows, loaded.heads)
    applied = graph.ancestors([h for h in heads if h in graph.parents])
    return [
        {"revision": rev, **row, "applied": rev in applied, "is_current": rev in heads}
        for rev, row in loaded.rows.items()
    ]


def _plans(name: str, heads: list[str], revisions: list[str], rmap) -> dict[str, object]:
    answers: dict[str, object] = {}
    for rev in revisions:
        try:
            answers[rev] = planner.plan_downgrade(name, rev, heads, revision_map=rmap).steps
        except RevisionResolutionError as exc:
            answers[rev] = str(exc)
    return answers


@pytest.mark.django_db(transaction=True)
def test_the_catalog_migration_moves_per_target_rows_to_one_catalog_per_directory_and_back(
    pg_database_factory, script_dir_factory, configure_target
):
    big = script_dir_factory()
    generate_history(big, 1000, merges=50, seed=7)
    shop_url = pg_database_factory()
    configure_target("shop", shop_url, repo_path("alembic.ini"))
    run_alembic("shop", "upgrade", "heads")
    for name in ("tenant_a", "tenant_b", "tenant_c"):
        configure_target(name, pg_database_factory(), big.ini)
    loaded_big = load_catalog(get_target("tenant_a"))
    walk = sorted(loaded_big.rows, key=lambda rev: loaded_big.rows[rev]["position"])
    positions = {"tenant_a": [walk[10]], "tenant_b": [walk[500]], "tenant_c": []}
    for name, heads in positions.items():
        if heads:
            run_alembic(name, "stamp", heads[0])
    shop_heads = [row[0] for row in pg_query(shop_url, "SELECT version_num FROM alembic_version")]
    positions["shop"] = sorted(shop_heads)

    executor = MigrationExecutor(connection)
    executor.migrate([BEFORE])
    try:
        old = executor.loader.project_state([BEFORE]).apps
        OldTarget, OldRevision = old.get_model("opsapp", "Target"), old.get_model("opsapp", "Revision")
        before: dict[str, list[dict]] = {}
        for name, heads in positions.items():
            config = get_target(name)
            loaded = loaded_big if name != "shop" else load_catalog(config)
            target = OldTarget.objects.create(
                name=name,
                alembic_ini=str(config.alembic_ini),
                script_fingerprint=script_fingerprint(config),
                script_heads=loaded.heads,
                current_heads=heads,
                last_seen_heads=heads,
                revision_count=len(loaded.rows),
                state="behind",
                last_synced_at=timezone.now(),
            )
            before[name] = _old_rows(loaded, heads)
            OldRevision.objects.bulk_create(
                [OldRevision(target=target, **row) for row in before[name]], batch_size=1000
            )
        assert OldRevision.objects.count() == 3 * 1000 + len(before["shop"])

        executor = MigrationExecutor(connection)
        executor.migrate([AFTER])

        assert ScriptCatalog.objects.count() == 2  # the demo's directory and the 1,000-revision one
        assert Revision.objects.count() == 1000 + len(before["shop"])
        for name, heads in positions.items():
            target = Target.objects.get(name=name)
            kept = {r.revision: r for r in revisions_of(target)}
            # No revision lost, every stored fact and every per-target flag as before.
            assert set(kept) == {row["revision"] for row in before[name]}
            for row in before[name]:
                got = kept[row["revision"]]
                assert {key: getattr(got, key) for key in row} == row
            loaded = loaded_big if name != "shop" else load_catalog(get_target(name))
            assert target.catalog.fingerprint == facts_fingerprint(loaded.rows, loaded.heads)
            # The planner answers as Alembic's own map of the files does.
            rmap = open_script_directory(get_target(name)).revision_map
            sample = [rev for i, rev in enumerate(sorted(loaded.rows)) if i % 97 == 0] + list(heads)
            if heads:
                assert _plans(name, heads, sample, None) == _plans(name, heads, sample, rmap)
        # The next sync finds nothing to re-read and keeps the migrated catalog.
        synced = sync_target("tenant_b")
        assert synced.catalog_reread is False and ScriptCatalog.objects.count() == 2

        executor = MigrationExecutor(connection)
        executor.migrate([BEFORE])
        old = executor.loader.project_state([BEFORE]).apps
        OldRevision = old.get_model("opsapp", "Revision")
        for name in positions:
            back = list(OldRevision.objects.filter(target__name=name).values("revision", *before[name][0]))
            assert sorted(back, key=lambda r: r["revision"]) == sorted(before[name], key=lambda r: r["revision"])
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes("opsapp"))


# ------------------------------------------------------------------ pages per target
@pytest.mark.django_db
def test_revision_pages_show_each_targets_own_position_on_a_shared_catalog(
    admin_client, branchy_scripts, pg_database_factory, configure_target
):
    from django.urls import reverse

    configure_target("early", pg_database_factory(), branchy_scripts.ini)
    configure_target("late", pg_database_factory(), branchy_scripts.ini)
    run_alembic("early", "upgrade", "c3")
    run_alembic("late", "upgrade", "heads")
    early, late = sync_all()
    assert early.catalog_id == late.catalog_id
    changelist = reverse("admin:opsapp_revision_changelist")

    def pending(target: Target) -> str:
        page = admin_client.get(changelist, {"target__id__exact": target.pk, "applied": "pending"})
        assert page.status_code == 200
        return page.content.decode()

    assert ">d4<" in pending(early) and ">h8<" in pending(early)
    assert ">d4<" not in pending(late) and "0 revisions" in pending(late)
    # Unfiltered, a row of a shared directory names the directory, not one target's position.
    everything = admin_client.get(changelist).content.decode()
    assert "(2 targets)" in everything and 'class="ops-flag ops-flag-pending"' not in everything

    d4 = Revision.objects.get(catalog_id=early.catalog_id, revision="d4")
    url = reverse("admin:opsapp_revision_change", args=[d4.pk])
    for_early = admin_client.get(url, {"target": early.pk}).content.decode()
    for_late = admin_client.get(url, {"target": late.pk}).content.decode()
    assert "it is not applied" in for_early
    assert "Downgrading to here would revert" in for_late and f'href="{url}?target={early.pk}">early<' in for_late


@pytest.mark.django_db(transaction=True)
def test_a_parallel_sync_of_six_targets_on_one_directory_imports_its_files_once(
    pg_database_factory, script_dir_factory, configure_target, tmp_path
):
    from opsapp.services.fleet.parallel import sync_targets
    from tests.test_catalog import marker_revision

    sd = script_dir_factory()
    marker = tmp_path / "imports.txt"
    marker_revision(sd, marker)
    sd.add("m1", "m0")
    names = [configure_target(f"tenant{i}", pg_database_factory(), sd.ini) for i in range(6)]

    synced = sync_targets(names, jobs=6)

    assert marker.read_text() == "x"  # one import of the directory for six targets in six threads
    assert [t.catalog_reread for t in synced].count(True) == 1
    assert len({t.catalog_id for t in synced}) == 1 and Revision.objects.count() == 2
