"""The revision catalog: sync, flags, states, incremental re-reads and the heads-changed audit event."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsapp.models import AuditAction, AuditEvent, Revision, Target, TargetState
from opsapp.services.catalog.store import revisions_of
from opsapp.services.catalog.sync import (
    OUTSIDE_THE_CONSOLE,
    read_current_heads,
    refresh_state,
    script_fingerprint,
    sync_target,
)
from opsapp.services.errors import TargetNotConfigured, TargetUnreachable
from opsapp.targets import get_target
from tests.conftest import ScriptDir, pg_query
from tests.histories import alembic_heads, generate_history, run_alembic

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _only_our_targets(settings):
    settings.OPS_TARGETS = {}


def rows(name: str) -> dict[str, Revision]:
    return {r.revision: r for r in revisions_of(Target.objects.get(name=name))}


def marker_revision(sd: ScriptDir, marker: Path) -> None:
    """A base revision that appends 'x' to `marker` every time its file is imported."""
    (sd.versions / "m0_marker.py").write_text(
        f'"""marker\n\nRevision ID: m0\nCreate Date: 2026-01-01 00:00:00\n"""\n'
        f"open({str(marker)!r}, 'a').write('x')\n"
        "revision = 'm0'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n"
        "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )


# ------------------------------------------------------------------ catalog
def test_it_catalogs_the_branchy_history_with_alembics_own_flags(branchy_scripts, pg_url, configure_target):
    name = configure_target("branchy", pg_url, branchy_scripts.ini)

    target = sync_target(name)

    alembic = alembic_heads(branchy_scripts.ini)
    catalog = rows(name)
    assert sorted(target.script_heads) == alembic["heads"] == ["h8", "x1"]
    assert sorted(r for r, row in catalog.items() if row.is_head) == alembic["heads"]
    assert sorted(r for r, row in catalog.items() if row.is_base) == alembic["bases"] == ["a1", "x1"]
    assert sorted(r for r, row in catalog.items() if row.is_branch_point) == alembic["branch_points"] == ["b2"]
    assert sorted(r for r, row in catalog.items() if row.is_merge_point) == alembic["merge_points"] == ["g7"]
    by_position = [row.revision for row in Revision.objects.filter(catalog_id=target.catalog_id).order_by("-position")]
    assert by_position == alembic["walk"]
    assert catalog["g7"].down_revisions == ["d4", "f6"]
    assert catalog["c3"].branch_labels == ["left"]  # declared as a tuple
    assert catalog["e5"].branch_labels == ["right"]  # declared as a string
    assert catalog["e5"].depends_on == ["c3"]
    assert catalog["a1"].message == "create items"
    assert catalog["a1"].create_date == "2026-01-01 00:00:00"
    assert "Revision ID: a1" in catalog["a1"].docstring
    assert catalog["x1"].message == "" and catalog["x1"].create_date == ""  # no docstring at all
    assert catalog["a1"].path == "versions/a1_create_items.py"
    assert target.revision_count == 9
    assert target.state == TargetState.EMPTY and target.pending_count == 9
    assert "s3cret" not in target.url_masked


def test_it_refuses_an_unconfigured_target_name():
    with pytest.raises(TargetNotConfigured, match="'nope' is not configured"):
        sync_target("nope")
    assert not Target.objects.filter(name="nope").exists()


def test_it_never_reimports_an_unchanged_script_directory(script_dir_factory, pg_url, configure_target, tmp_path):
    sd = script_dir_factory()
    marker = tmp_path / "imports.txt"
    marker_revision(sd, marker)
    sd.add("m1", "m0")
    name = configure_target("inc", pg_url, sd.ini)

    first = sync_target(name)
    second = sync_target(name)

    assert first.catalog_reread is True and second.catalog_reread is False
    assert marker.read_text() == "x"  # the file was imported exactly once
    assert second.script_fingerprint == first.script_fingerprint
    sync_target(name, force=True)
    assert marker.read_text() == "xx"
    stat = (sd.versions / "m0_marker.py").stat()
    os.utime(sd.versions / "m0_marker.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert sync_target(name).catalog_reread is True
    assert marker.read_text() == "xxx"


def test_a_resync_with_nothing_changed_costs_the_same_few_queries_at_any_size(
    script_dir_factory, pg_database_factory, configure_target
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from opsapp.services.alembic_api import connect, make_config

    costs = {}
    for size in (5, 200):
        sd = script_dir_factory()
        generate_history(sd, size, merges=size // 20, seed=size)
        url = pg_database_factory()
        name = configure_target(f"steady{size}", url, sd.ini)
        sync_target(name)
        config = get_target(name)
        with connect(config) as conn, conn.begin():
            from alembic import command

            command.stamp(make_config(config, connection=conn), "heads")
        moved = sync_target(name)
        assert moved.state == TargetState.AT_HEAD and all(row.applied for row in revisions_of(moved))
        with CaptureQueriesContext(connection) as queries:
            again = sync_target(name)
        assert again.catalog_reread is False and again.state == TargetState.AT_HEAD
        costs[size] = len(queries)
        # Nothing moved: the revision rows are neither read back nor rewritten.
        assert not [q["sql"] for q in queries.captured_queries if "opsapp_revision" in q["sql"]]
    assert costs[5] == costs[200] <= 6, costs


def test_it_adds_updates_and_removes_rows_when_the_directory_changes(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    sd.add("r1", None, message="first")
    sd.add("r2", "r1", message="second")
    name = configure_target("inc2", pg_url, sd.ini)
    sync_target(name)
    ids_before = {rev: row.pk for rev, row in rows(name).items()}

    sd.add("r3", "r2", message="third")
    (sd.versions / "r2_second.py").write_text((sd.versions / "r2_second.py").read_text().replace("second", "2nd one"))
    target = sync_target(name)

    catalog = rows(name)
    assert set(catalog) == {"r1", "r2", "r3"}
    assert catalog["r2"].message == "2nd one" and catalog["r2"].pk == ids_before["r2"]
    assert catalog["r3"].is_head and not catalog["r2"].is_head
    assert target.script_heads == ["r3"]

    (sd.versions / "r3_third.py").unlink()
    target = sync_target(name)
    assert set(rows(name)) == {"r1", "r2"} and target.script_heads == ["r2"] and target.revision_count == 2


def test_it_handles_several_bases_and_three_and_four_way_merges(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    sd.add("p1", None, message="base one")
    sd.add("q1", None, message="base two", branch_labels=("aux", "auxiliary"))
    sd.add("p2", "p1", branch_labels=("alpha", "beta"), depends_on=("q1",))
    sd.add("p3", "p1", create_date=None)
    sd.add("p4", "p1", docstring=False)
    sd.add("m1", ("p2", "p3", "p4"), message="three way merge")
    sd.add("r1", "m1")
    sd.add("r2", "m1", depends_on="aux")
    sd.add("s1", "m1")
    sd.add("r3", "q1")
    sd.add("m2", ("r1", "r2", "s1", "r3"), message="four way merge")
    name = configure_target("merges", pg_url, sd.ini)

    target = sync_target(name)
    alembic = alembic_heads(sd.ini)
    catalog = rows(name)
    assert target.script_heads == alembic["heads"] == ["m2"]
    assert sorted(r for r, row in catalog.items() if row.is_base) == alembic["bases"] == ["p1", "q1"]
    assert sorted(r for r, row in catalog.items() if row.is_merge_point) == alembic["merge_points"] == ["m1", "m2"]
    assert sorted(r for r, row in catalog.items() if row.is_branch_point) == alembic["branch_points"] == ["m1", "p1"]
    assert catalog["m2"].down_revisions == ["r1", "r2", "s1", "r3"]
    assert catalog["p2"].branch_labels == ["alpha", "beta"] and catalog["p2"].depends_on == ["q1"]
    assert catalog["r2"].depends_on == ["aux"]
    assert catalog["p3"].create_date == "" and catalog["p4"].message == ""

    run_alembic(name, "upgrade", "heads")
    target = sync_target(name)
    assert target.state == TargetState.AT_HEAD and target.pending_count == 0
    assert all(row.applied for row in rows(name).values())
    assert [r for r, row in rows(name).items() if row.is_current] == ["m2"]


def test_a_generated_thousand_revision_history_agrees_with_alembic_in_few_queries(
    script_dir_factory, pg_url, configure_target, django_assert_max_num_queries
):
    sd = script_dir_factory()
    generate_history(sd, 1000, merges=30, seed=7)
    name = configure_target("big", pg_url, sd.ini)

    with django_assert_max_num_queries(40):
        target = sync_target(name)

    alembic = alembic_heads(sd.ini)
    catalog = rows(name)
    assert len(catalog) == 1000 == target.revision_count
    assert sorted(target.script_heads) == alembic["heads"]
    assert sorted(r for r, row in catalog.items() if row.is_base) == alembic["bases"]
    assert sorted(r for r, row in catalog.items() if row.is_merge_point) == alembic["merge_points"]
    assert len(alembic["merge_points"]) == 30
    assert sorted(r for r, row in catalog.items() if row.is_branch_point) == alembic["branch_points"]
    assert [
        row.revision for row in Revision.objects.filter(catalog_id=target.catalog_id).order_by("-position")
    ] == alembic["walk"]
    assert {r: row.down_revisions for r, row in catalog.items()} == alembic["down"]
    assert {r: row.branch_labels for r, row in catalog.items()} == alembic["labels"]
    with django_assert_max_num_queries(15):
        assert sync_target(name).catalog_reread is False


# -------------------------------------------------------------------- states
def test_it_shows_behind_with_the_pending_count_then_at_head(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    for i in range(1, 5):
        sd.add(f"l{i}", f"l{i - 1}" if i > 1 else None)
    name = configure_target("linear", pg_url, sd.ini)
    run_alembic(name, "upgrade", "l2")

    target = sync_target(name)
    assert (target.state, target.pending_count, target.current_heads) == (TargetState.BEHIND, 2, ["l2"])
    assert "2 revision(s) not applied" in target.state_detail
    catalog = rows(name)
    assert [r for r in sorted(catalog) if catalog[r].applied] == ["l1", "l2"]
    assert [r for r in catalog if catalog[r].is_current] == ["l2"]

    run_alembic(name, "upgrade", "head")
    target = sync_target(name)
    assert (target.state, target.pending_count) == (TargetState.AT_HEAD, 0)


def test_it_shows_multiple_heads_until_the_database_is_at_every_head(branchy_scripts, pg_url, configure_target):
    name = configure_target("branchy", pg_url, branchy_scripts.ini)
    run_alembic(name, "upgrade", "h8")

    target = sync_target(name)
    assert target.state == TargetState.MULTIPLE_HEADS and target.pending_count == 1
    assert 'alembic merge -m "merge heads" h8 x1' in target.state_detail

    run_alembic(name, "upgrade", "heads")
    target = sync_target(name)
    assert target.state == TargetState.AT_HEAD and sorted(target.current_heads) == ["h8", "x1"]


def test_applied_follows_depends_on_like_alembic(branchy_scripts, pg_url, configure_target):
    name = configure_target("branchy", pg_url, branchy_scripts.ini)
    run_alembic(name, "upgrade", "e5")  # e5 depends_on c3: Alembic applies c3 too

    sync_target(name)

    assert read_current_heads(get_target(name)) == ["e5"]
    applied = sorted(r for r, row in rows(name).items() if row.applied)
    assert applied == ["a1", "b2", "c3", "e5"]
    assert pg_query(
        pg_url,
        "SELECT to_regclass('tags') IS NOT NULL, count(*) FROM information_schema.columns WHERE column_name = 'note'",
    ) == [(True, 1)]


def test_it_shows_empty_without_alembic_version_and_with_an_empty_one(branchy_scripts, pg_url, configure_target):
    name = configure_target("branchy", pg_url, branchy_scripts.ini)
    assert sync_target(name).state == TargetState.EMPTY
    pg_query(pg_url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    target = sync_target(name)
    assert target.state == TargetState.EMPTY and target.current_heads == [] and target.pending_count == 9
    assert not any(row.applied for row in rows(name).values())


def test_it_shows_an_unknown_revision_and_how_to_resolve_it(branchy_scripts, pg_url, configure_target):
    name = configure_target("branchy", pg_url, branchy_scripts.ini)
    pg_query(pg_url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    pg_query(pg_url, "INSERT INTO alembic_version VALUES ('deadbeef0001')")

    target = sync_target(name)

    assert target.state == TargetState.UNKNOWN_REVISION
    assert target.current_heads == ["deadbeef0001"]
    assert "Can't locate revision identified by 'deadbeef0001'" in target.state_detail
    assert "head(s): h8, x1" in target.state_detail
    assert "alembic stamp --purge" in target.state_detail
    assert not any(row.applied or row.is_current for row in rows(name).values())


def test_an_unreachable_target_is_shown_with_its_password_masked(branchy_scripts, configure_target):
    name = configure_target("down", "postgresql://u:s3cret@127.0.0.1:1/nope", branchy_scripts.ini)

    target = sync_target(name)

    assert target.state == TargetState.UNREACHABLE
    assert "unreachable" in target.state_detail
    assert target.revision_count == 9  # the catalog itself still syncs
    stored = Target.objects.filter(name=name).values().get()
    assert not any("s3cret" in str(value) for value in stored.values())
    with pytest.raises(TargetUnreachable) as exc:
        read_current_heads(get_target(name))
    assert "s3cret" not in str(exc.value)
    assert refresh_state(name).state == TargetState.UNREACHABLE


def test_a_sqlite_target_whose_file_is_missing_is_unreachable_and_no_file_is_created(
    branchy_scripts, configure_target, tmp_path
):
    missing = tmp_path / "typo" / "shop.sqlite3"
    missing.parent.mkdir()
    name = configure_target("lite", f"sqlite:///{missing}", branchy_scripts.ini)

    target = sync_target(name)

    assert target.state == TargetState.UNREACHABLE
    assert f"SQLite file {str(missing)!r} does not exist" in target.state_detail
    assert not missing.exists()  # SQLite would have created an empty database there
    with pytest.raises(TargetUnreachable):
        read_current_heads(get_target(name))
    assert not missing.exists()


def test_a_file_that_fails_to_import_is_reported_by_name_and_the_catalog_kept(
    branchy_scripts, pg_url, configure_target
):
    name = configure_target("branchy", pg_url, branchy_scripts.ini)
    sync_target(name)
    (branchy_scripts.versions / "zz1_broken.py").write_text("revision = 'zz1'\ndown_revision = 'h8'\ndef upgrade(:\n")
    (branchy_scripts.versions / "zz2_missing_import.py").write_text("import no_such_module_here\nrevision = 'zz2'\n")

    target = sync_target(name)

    assert target.state == TargetState.SCRIPT_ERROR
    files = {error["file"]: error["error"] for error in target.sync_errors}
    assert files.keys() == {"versions/zz1_broken.py", "versions/zz2_missing_import.py"}
    assert files["versions/zz1_broken.py"].startswith("SyntaxError")
    assert "no_such_module_here" in files["versions/zz2_missing_import.py"]
    assert "versions/zz1_broken.py" in target.state_detail
    assert len(rows(name)) == 9  # the last good catalog is kept
    assert sync_target(name).catalog_reread is False  # still broken, not re-imported

    (branchy_scripts.versions / "zz1_broken.py").unlink()
    (branchy_scripts.versions / "zz2_missing_import.py").unlink()
    assert sync_target(name).state == TargetState.EMPTY


def test_a_revision_pointing_at_a_missing_parent_is_a_script_error(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    sd.add("k1", None)
    sd.add("k2", "gone")
    name = configure_target("orphan", pg_url, sd.ini)
    target = sync_target(name)
    assert target.state == TargetState.SCRIPT_ERROR
    assert "gone" in target.state_detail


# ------------------------------------------------------- refresh and audit
def test_refresh_state_reads_only_alembic_version_and_notes_a_stale_catalog(
    script_dir_factory, pg_url, configure_target, tmp_path
):
    sd = script_dir_factory()
    marker = tmp_path / "imports.txt"
    marker_revision(sd, marker)
    sd.add("m1", "m0")
    name = configure_target("inc", pg_url, sd.ini)
    sync_target(name)
    run_alembic(name, "upgrade", "m1")  # Alembic itself imports the files here
    imports = marker.read_text()

    target = refresh_state(name)
    assert (target.state, target.current_heads) == (TargetState.AT_HEAD, ["m1"])
    assert rows(name)["m1"].is_current and rows(name)["m0"].applied

    sd.add("m2", "m1")
    target = refresh_state(name)
    assert "run sync_revisions" in target.state_detail
    assert marker.read_text() == imports  # refresh never imported a migration file


def test_an_upgrade_done_outside_the_console_is_audited_as_heads_changed(branchy_scripts, pg_url, configure_target):
    name = configure_target("branchy", pg_url, branchy_scripts.ini)
    run_alembic(name, "upgrade", "a1")
    sync_target(name)
    assert not AuditEvent.objects.filter(action=AuditAction.HEADS_CHANGED).exists()  # first look: nothing to compare

    run_alembic(name, "upgrade", "heads")
    sync_target(name)
    sync_target(name)  # unchanged: no second event

    events = list(AuditEvent.objects.filter(action=AuditAction.HEADS_CHANGED))
    assert len(events) == 1
    event = events[0]
    assert (event.target_name, event.from_revision, event.to_revision, event.outcome) == (name, "a1", "h8,x1", "info")
    assert event.actor == OUTSIDE_THE_CONSOLE  # not the sync that happened to see it
    assert event.detail == {
        "old_heads": ["a1"],
        "new_heads": ["h8", "x1"],
        "observed_by": "system:catalog",
        "observed_by_user_id": None,
        "observed_by_ip": None,
    }

    run_alembic(name, "downgrade", "x1@base")
    refresh_state(name)
    last = AuditEvent.objects.filter(action=AuditAction.HEADS_CHANGED).order_by("-seq").first()
    assert (last.from_revision, last.to_revision) == ("h8,x1", "h8")


def test_the_fingerprint_changes_with_a_new_file_only(branchy_scripts, pg_url, configure_target):
    config = get_target(configure_target("branchy", pg_url, branchy_scripts.ini))
    before = script_fingerprint(config)
    assert script_fingerprint(config) == before
    (branchy_scripts.versions / "__pycache__").mkdir(exist_ok=True)
    (branchy_scripts.versions / "__pycache__" / "junk.py").write_text("x = 1\n")
    assert script_fingerprint(config) == before
    branchy_scripts.add("i9", "h8")
    assert script_fingerprint(config) != before


def test_an_empty_script_directory_and_a_missing_ini_do_not_crash(
    script_dir_factory, pg_url, configure_target, tmp_path
):
    sd = script_dir_factory()
    target = sync_target(configure_target("bare", pg_url, sd.ini))
    assert (target.state, target.revision_count, target.script_heads) == (TargetState.EMPTY, 0, [])

    target = sync_target(configure_target("noini", pg_url, tmp_path / "missing.ini"))
    assert target.state == TargetState.SCRIPT_ERROR
    assert "does not exist" in target.state_detail
    assert refresh_state("noini").state == TargetState.SCRIPT_ERROR


@pytest.mark.parametrize(("n", "merges"), [(300, 30), (1000, 30), (40, 0), (7, 2)])
def test_the_history_generator_plans_exactly_what_was_asked(n, merges):
    from tests.histories import plan_history

    specs = plan_history(n, merges, seed=5)
    assert len(specs) == n and len({s.revision for s in specs}) == n
    assert sum(isinstance(s.down, tuple) for s in specs) == merges
    assert plan_history(n, merges, seed=5) == specs  # deterministic
    if merges >= 30:
        assert {len(s.down) for s in specs if isinstance(s.down, tuple)} >= {2, 3}
        assert any(isinstance(s.branch_labels, tuple) for s in specs) and any(
            isinstance(s.branch_labels, str) for s in specs
        )
        assert any(isinstance(s.depends_on, tuple) for s in specs) and any(isinstance(s.depends_on, str) for s in specs)
        assert sum(s.down is None for s in specs) == 2 and any(not s.docstring for s in specs)
    with pytest.raises(ValueError, match="cannot hold"):
        plan_history(10, 5)


def test_a_bulk_sync_refreshes_the_planner_statistics_of_the_revision_table(
    script_dir_factory, pg_url, configure_target, django_capture_on_commit_callbacks
):
    from django.db import connection

    def estimated_rows() -> float:
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'opsapp_revision'")
            return cursor.fetchone()[0]

    sd = script_dir_factory()
    generate_history(sd, 1200, merges=10, seed=3)
    name = configure_target("bulk", pg_url, sd.ini)
    before = estimated_rows()

    with django_capture_on_commit_callbacks(execute=True):
        sync_target(name)

    assert before <= 0  # never analyzed (-1) or empty
    assert estimated_rows() == 1200
