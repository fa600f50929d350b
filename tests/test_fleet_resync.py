"""Re-sync of a fleet: unchanged targets are confirmed in bulk, every change still goes through sync_target."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from opsapp.models import AuditAction, AuditEvent, Revision, Target, TargetState
from opsapp.services.catalog.sync import read_current_heads
from opsapp.services.errors import TargetUnreachable
from opsapp.services.fleet.parallel import sync_targets
from opsapp.targets import get_target
from tests.conftest import pg_query

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _only_our_targets(settings):
    settings.OPS_TARGETS = {}
    settings.OPS_CONNECT_TIMEOUT_SECONDS = 3
    settings.OPS_READ_TIMEOUT_SECONDS = 1


@pytest.fixture
def scripts(script_dir_factory):
    sd = script_dir_factory()
    sd.add("l1", None, message="one")
    sd.add("l2", "l1", message="two")
    return sd


def at_head(url: str) -> str:
    pg_query(url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    pg_query(url, "INSERT INTO alembic_version VALUES ('l2')")
    return url


@pytest.fixture
def fleet(scripts, pg_database_factory, configure_target):
    """Six targets at head on one script directory, synced once. Returns {name: url}."""
    urls = {f"t{i}": at_head(pg_database_factory()) for i in range(6)}
    for name, url in urls.items():
        configure_target(name, url, scripts.ini)
    assert {t.state for t in sync_targets(list(urls))} == {TargetState.AT_HEAD}
    return urls


def resync_queries(names: list[str]) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        results = sync_targets(names)
    assert [t.name for t in results] == names
    assert not any(t.catalog_reread for t in results)
    return [q["sql"] for q in queries.captured_queries]


def test_a_resync_of_unchanged_targets_costs_as_many_console_queries_for_six_as_for_two(fleet):
    before = dict(Target.objects.values_list("name", "last_synced_at"))
    revisions = list(Revision.objects.order_by("pk").values_list("pk", "revision", "catalog_id"))

    two = resync_queries(["t0", "t1"])
    six = resync_queries(list(fleet))

    assert len(six) == len(two)
    # No revision row is read or written for an unchanged target.
    assert not [sql for sql in six if "opsapp_revision" in sql]
    assert list(Revision.objects.order_by("pk").values_list("pk", "revision", "catalog_id")) == revisions
    for name, synced_at in Target.objects.values_list("name", "last_synced_at"):
        assert synced_at > before[name], name
    assert set(Target.objects.values_list("state", flat=True)) == {TargetState.AT_HEAD}


def test_a_resync_still_sees_heads_moved_outside_the_console(fleet):
    pg_query(fleet["t3"], "UPDATE alembic_version SET version_num = 'l1'")

    results = {t.name: t for t in sync_targets(list(fleet))}

    assert results["t3"].state == TargetState.BEHIND
    assert Target.objects.get(name="t3").current_heads == ["l1"]
    assert Target.objects.get(name="t3").pending_count == 1
    event = AuditEvent.objects.get(action=AuditAction.HEADS_CHANGED)
    assert (event.target_name, event.from_revision, event.to_revision) == ("t3", "l2", "l1")
    assert {n: t.state for n, t in results.items() if n != "t3"} == dict.fromkeys(
        ["t0", "t1", "t2", "t4", "t5"], TargetState.AT_HEAD
    )


def test_a_resync_rereads_a_script_directory_that_changed(fleet, scripts):
    scripts.add("l3", "l2", message="three")

    results = sync_targets(list(fleet))

    # The directory's catalog is shared: it is re-read once, and every target sees the new revision.
    assert any(t.catalog_reread for t in results)
    assert {t.state for t in results} == {TargetState.BEHIND}
    assert Revision.objects.filter(revision="l3").count() == 1


def test_a_tag_changed_in_the_configuration_reaches_the_target_on_resync(fleet, settings):
    targets = {name: dict(raw) for name, raw in settings.OPS_TARGETS.items()}
    targets["t2"]["TAGS"] = {"region": "eu"}
    settings.OPS_TARGETS = targets

    sync_targets(list(fleet))

    assert Target.objects.get(name="t2").tags == {"region": "eu"}
    assert Target.objects.get(name="t1").tags == {}


def test_a_target_that_locks_up_after_a_sync_is_recorded_unreachable_on_resync(fleet):
    holder = psycopg.connect(fleet["t4"])
    holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
    try:
        results = {t.name: t for t in sync_targets(list(fleet))}
    finally:
        holder.rollback()
        holder.close()

    assert results["t4"].state == TargetState.UNREACHABLE
    assert "cannot read alembic_version" in results["t4"].state_detail
    assert Target.objects.get(name="t4").state == TargetState.UNREACHABLE
    assert Target.objects.exclude(name="t4").filter(state=TargetState.AT_HEAD).count() == 5


def test_reading_the_version_table_directly_matches_alembic(scripts, pg_database_factory, configure_target):
    empty = configure_target("empty", pg_database_factory(), scripts.ini)
    stamped = configure_target("stamped", at_head(pg_database_factory()), scripts.ini)
    down = configure_target("down", "postgresql://postgres:s3cret@127.0.0.1:1/x", scripts.ini)

    assert read_current_heads(get_target(empty)) == []
    assert read_current_heads(get_target(stamped)) == ["l2"]
    with pytest.raises(TargetUnreachable) as caught:
        read_current_heads(get_target(down))
    assert "is unreachable" in str(caught.value) and "s3cret" not in str(caught.value)
