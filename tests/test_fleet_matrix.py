"""The fleet matrix on the admin index (states, counts, tag and state filters, links) and check_drift --all --json."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from opsapp.models import RollbackRequest, RollbackStatus, Snapshot, SnapshotStatus, Target, TargetState
from tests.histories import run_alembic

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _only_our_targets(settings):
    settings.OPS_TARGETS = {}


def matrix_rows(html: str) -> dict[str, str]:
    """{target name: its matrix state} as the page shows it (the row's class)."""
    table = html.split('id="fleet-matrix"')[1].split("</table>")[0]
    return dict(
        (name, state)
        for state, name in re.findall(
            r'<tr class="fleet-row fleet-state-(\w+)">\s*<th>(?:<a href="[^"]*">)?(\w+)', table
        )
    )


def column_counts(html: str) -> dict[str, int]:
    table = html.split('id="fleet-matrix"')[1].split("</thead>")[0]
    return {
        key: int(count)
        for key, count in re.findall(
            r'<th class="fleet-col fleet-(\w+)[^"]*"><a [^>]*>[^<]*<span class="fleet-count">(\d+)</span>', table
        )
    }


@pytest.fixture
def fleet_rows():
    """Stored targets in every matrix state, tagged by region and tier."""
    rows = {
        "eu_a": (TargetState.AT_HEAD, {"region": "eu", "tier": "prod"}),
        "eu_b": (TargetState.BEHIND, {"region": "eu", "tier": "prod"}),
        "eu_c": (TargetState.EMPTY, {"region": "eu", "tier": "staging"}),
        "us_a": (TargetState.UNKNOWN_REVISION, {"region": "us", "tier": "prod"}),
        "us_b": (TargetState.MULTIPLE_HEADS, {"region": "us"}),
        "us_c": (TargetState.UNREACHABLE, {"region": "us", "tier": "prod"}),
    }
    created = {}
    for name, (state, tags) in rows.items():
        created[name] = Target.objects.create(name=name, state=state, tags=tags, pending_count=4)
    snap = Snapshot.objects.create(target=created["eu_a"], status=SnapshotStatus.VERIFIED, format="pg_custom")
    RollbackRequest.objects.create(target=created["eu_b"], status=RollbackStatus.PENDING, reason="r", to_revision="a")
    return created, snap


def test_the_index_shows_every_target_against_its_state_with_counts_and_links(client, admin_user, fleet_rows):
    targets, snap = fleet_rows
    client.force_login(admin_user)
    html = client.get(reverse("admin:index")).content.decode()
    assert matrix_rows(html) == {
        "eu_a": "at_head",
        "eu_b": "behind",
        "eu_c": "behind",
        "us_a": "unknown",
        "us_b": "multiple_heads",
        "us_c": "unreachable",
    }
    assert column_counts(html) == {"at_head": 1, "behind": 2, "unknown": 1, "multiple_heads": 1, "unreachable": 1}
    assert "behind 4" in html
    assert f'href="{reverse("admin:opsapp_target_change", args=[targets["eu_a"].pk])}"' in html
    assert f"#{snap.pk}" in html
    assert f'?target__id__exact={targets["eu_b"].pk}">1</a>' in html
    assert "Fleet: 6 of 6 targets" in html
    # The tags show on the target's own page too.
    page = client.get(reverse("admin:opsapp_target_change", args=[targets["eu_a"].pk])).content.decode()
    assert "region=eu, tier=prod" in page


def test_filters_by_state_and_tag(client, admin_user, fleet_rows):
    client.force_login(admin_user)
    index = reverse("admin:index")
    html = client.get(index, {"fleet_state": "behind"}).content.decode()
    assert set(matrix_rows(html)) == {"eu_b", "eu_c"}
    html = client.get(index, {"fleet_tag": "region=us"}).content.decode()
    assert set(matrix_rows(html)) == {"us_a", "us_b", "us_c"}
    # Counts follow the tag filter: they are the choices of the state filter.
    assert column_counts(html) == {"at_head": 0, "behind": 0, "unknown": 1, "multiple_heads": 1, "unreachable": 1}
    html = client.get(index, {"fleet_tag": "tier=prod", "fleet_state": "at_head"}).content.decode()
    assert set(matrix_rows(html)) == {"eu_a"}
    assert "Fleet: 1 of 6 targets" in html
    # Each chip and column links to its filter, keeping the other one.
    assert 'href="?fleet_state=unreachable&amp;fleet_tag=tier%3Dprod"' in html
    assert 'href="?fleet_state=at_head&amp;fleet_tag=region%3Deu"' in html


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fleet_state": "sideways"}, "Unknown state filter &#x27;sideways&#x27;"),
        ({"fleet_tag": "region"}, "must look like key=value"),
        ({"fleet_tag": "=eu"}, "must look like key=value"),
    ],
)
def test_a_bad_filter_says_so_and_shows_everything(client, admin_user, fleet_rows, params, message):
    client.force_login(admin_user)
    response = client.get(reverse("admin:index"), params)
    assert response.status_code == 200
    html = response.content.decode()
    assert message in html and len(matrix_rows(html)) == 6


def test_the_index_reads_500_targets_in_a_bounded_number_of_queries(client, admin_user, django_assert_max_num_queries):
    Target.objects.bulk_create(
        Target(
            name=f"tenant{i:03d}",
            state=TargetState.AT_HEAD if i % 7 else TargetState.BEHIND,
            tags={"shard": str(i % 5)},
        )
        for i in range(500)
    )
    client.force_login(admin_user)
    with django_assert_max_num_queries(40):
        html = client.get(reverse("admin:index")).content.decode()
    assert len(matrix_rows(html)) == 500
    assert column_counts(html)["behind"] == 72


@pytest.fixture
def scripts(script_dir_factory):
    sd = script_dir_factory()
    sd.add("a1", None)
    sd.add("a2", "a1")
    sd.add("a3", "a2")
    return sd


def test_check_drift_all_json_gives_the_same_matrix(client, admin_user, scripts, pg_database_factory, configure_target):
    configure_target("head", pg_database_factory(), scripts.ini)
    configure_target("lagging", pg_database_factory(), scripts.ini)
    configure_target("down", "postgresql://postgres@127.0.0.1:1/none", scripts.ini)
    run_alembic("head", "upgrade", "heads")
    run_alembic("lagging", "upgrade", "a1")
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("check_drift", "--all", "--json", stdout=out, stderr=io.StringIO())
    report = {row["target"]: row for row in json.loads(out.getvalue())}
    assert {name: row["matrix_state"] for name, row in report.items()} == {
        "down": "unreachable",
        "head": "at_head",
        "lagging": "behind",
    }
    assert report["lagging"]["behind"] == 2 and report["lagging"]["matrix_label"] == "behind 2"
    assert report["head"]["snapshot_age_seconds"] is None and report["head"]["open_requests"] == 0

    client.force_login(admin_user)
    html = client.get(reverse("admin:index")).content.decode()
    assert matrix_rows(html) == {name: row["matrix_state"] for name, row in report.items()}


def add_targets(count: int, start: int) -> None:
    """`count` synced targets, each with a verified snapshot and an open request (the matrix's per-target facts)."""
    for i in range(start, start + count):
        target = Target.objects.create(
            name=f"t{i:03d}", state=TargetState.BEHIND, pending_count=2, current_heads=["a1"], tags={"region": "eu"}
        )
        Snapshot.objects.create(target=target, status=SnapshotStatus.VERIFIED, format="pg_custom")
        RollbackRequest.objects.create(target=target, status=RollbackStatus.PENDING, reason="r", to_revision="a")


def index_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        html = client.get(reverse("admin:index")).content.decode()
    assert html.count('class="fleet-row ') == Target.objects.count()
    return len(queries.captured_queries)


def test_the_index_runs_as_many_queries_for_50_targets_as_for_5(client, admin_user):
    client.force_login(admin_user)
    add_targets(5, 0)
    index_queries(client)  # warm: session, content types
    five = index_queries(client)
    add_targets(45, 5)

    assert index_queries(client) == five
