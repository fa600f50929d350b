"""Admin pages for targets and revisions: states, drift, filters, detail links, permissions.

Real PostgreSQL targets, real Alembic script directories, real catalog sync;
pages are fetched through Django's test client.
"""

from __future__ import annotations

import re

import pytest
from alembic import command
from django.test import Client
from django.urls import NoReverseMatch, reverse

from opsapp.models import Revision, Target, TargetState
from opsapp.services.alembic_api import connect, make_config
from opsapp.services.catalog.sync import sync_target
from opsapp.targets import get_target
from tests.conftest import pg_query

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _only_test_targets(settings) -> None:
    """No default `shop` target: each test configures exactly the targets it uses."""
    settings.OPS_TARGETS = {}


def stamp(name: str, *revisions: str) -> None:
    """Record `revisions` in the target's alembic_version through Alembic's API (no migration runs)."""
    config = get_target(name)
    with connect(config) as conn:
        command.stamp(make_config(config, connection=conn), list(revisions))
        conn.commit()


def with_password(url: str, password: str = "topsecret") -> str:
    # The test server trusts local connections, so any password works and must never be shown.
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")


@pytest.fixture
def branchy(pg_url, branchy_scripts, configure_target) -> Target:
    """The branchy history, database at (g7, x1): h8 pending; scripts have two heads (h8, x1)."""
    configure_target("branchy", with_password(pg_url), branchy_scripts.ini)
    stamp("branchy", "g7", "x1")
    return sync_target("branchy")


@pytest.fixture
def admin_client(client, admin_user) -> Client:
    client.force_login(admin_user)
    return client


def ids_in_changelist(response) -> set[str]:
    return {row.revision for row in response.context["cl"].result_list}


def revision_url(target: Target, rev: str) -> str:
    return reverse(
        "admin:opsapp_revision_change", args=[Revision.objects.get(catalog_id=target.catalog_id, revision=rev).pk]
    )


# ------------------------------------------------------------------ targets
def test_the_target_list_shows_state_heads_masked_url_and_revision_count(admin_client, branchy):
    response = admin_client.get(reverse("admin:opsapp_target_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "topsecret" not in page
    assert "postgres:***@" in page
    assert "multiple heads in scripts" in page
    assert "g7, x1" in page  # current heads
    assert "h8, x1" in page  # script heads
    assert ">9<" in page  # revision count


def test_a_behind_target_shows_how_many_revisions_are_pending(
    admin_client, pg_url, script_dir_factory, configure_target
):
    sd = script_dir_factory()
    sd.add("r1", None)
    sd.add("r2", "r1")
    sd.add("r3", "r2")
    sd.add("r4", "r3")
    configure_target("linear", pg_url, sd.ini)
    stamp("linear", "r2")
    sync_target("linear")
    page = admin_client.get(reverse("admin:opsapp_target_changelist")).content.decode()
    assert "behind (2 pending)" in page


def test_an_unreachable_target_still_renders_as_unreachable_without_its_password(
    admin_client, branchy_scripts, configure_target
):
    configure_target("down", "postgresql://ops:s3cretpw@127.0.0.1:1/nowhere", branchy_scripts.ini)
    sync_target("down")
    response = admin_client.get(reverse("admin:opsapp_target_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "unreachable" in page
    assert "s3cretpw" not in page
    target = Target.objects.get(name="down")
    assert target.state == TargetState.UNREACHABLE
    detail = admin_client.get(reverse("admin:opsapp_target_change", args=[target.pk]))
    assert detail.status_code == 200
    assert "s3cretpw" not in detail.content.decode()
    assert "is unreachable" in detail.content.decode()


def test_the_target_list_names_a_configured_target_that_was_never_synced_and_sync_all_adds_it(
    admin_client, pg_url, branchy_scripts, configure_target
):
    configure_target("fresh", pg_url, branchy_scripts.ini)
    response = admin_client.get(reverse("admin:opsapp_target_changelist"))
    assert response.status_code == 200
    note = response.content.decode().split('id="not-synced"')[1].split("</div>")[0]
    assert "not synced yet: fresh" in note and "Sync all targets" in note
    assert not Target.objects.filter(name="fresh").exists()  # the GET created nothing

    page = admin_client.post(reverse("admin:opsapp_target_sync_all"), follow=True).content.decode()
    assert "Synced fresh: 9 revisions" in page
    assert Target.objects.get(name="fresh").state == TargetState.EMPTY
    assert 'id="not-synced"' not in page


def test_the_target_page_explains_an_unknown_revision_and_how_to_resolve_it(admin_client, branchy, pg_url):
    pg_query(pg_url, "UPDATE alembic_version SET version_num = 'zz99' WHERE version_num = 'g7'")
    url = reverse("admin:opsapp_target_change", args=[branchy.pk])
    before = admin_client.get(url).content.decode()  # reading shows the live heads, stores nothing
    notice = before.split('id="live-heads-differ"')[1].split("</div>")[0]
    assert "x1, zz99" in notice and "Press Sync now" in notice
    assert Target.objects.get(pk=branchy.pk).state == TargetState.MULTIPLE_HEADS

    response = admin_client.post(reverse("admin:opsapp_target_sync", args=[branchy.pk]), follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="live-heads-differ"' not in page
    assert "unknown revision" in page
    assert "zz99" in page
    assert "Can&#x27;t locate revision identified by" in page
    assert "alembic stamp" in page
    assert Target.objects.get(pk=branchy.pk).state == TargetState.UNKNOWN_REVISION


def test_the_target_page_shows_multiple_heads_with_the_merge_command(admin_client, branchy):
    page = admin_client.get(reverse("admin:opsapp_target_change", args=[branchy.pk])).content.decode()
    assert "multiple heads in scripts" in page
    assert "alembic merge -m &quot;merge heads&quot; h8 x1" in page


def test_the_target_page_names_a_script_file_that_fails_to_import(admin_client, branchy):
    broken = branchy_scripts_dir(branchy) / "zz_broken.py"
    broken.write_text("revision = 'zz'\ndown_revision = 'h8'\nraise ValueError('broken on purpose')\n")
    sync_target("branchy")
    page = admin_client.get(reverse("admin:opsapp_target_change", args=[branchy.pk])).content.decode()
    assert "script directory error" in page
    assert "zz_broken.py" in page
    assert "broken on purpose" in page


def branchy_scripts_dir(target: Target):
    return get_target(target.name).script_location / "versions"


def test_the_target_page_links_revisions_graph_and_offers_sync_now(admin_client, branchy):
    page = admin_client.get(reverse("admin:opsapp_target_change", args=[branchy.pk])).content.decode()
    assert reverse("admin:opsapp_target_graph", args=[branchy.pk]) in page
    assert f"target__id__exact={branchy.pk}" in page
    assert reverse("admin:opsapp_target_sync", args=[branchy.pk]) in page
    assert 'id="sync-now"' in page


def test_sync_now_refuses_a_get_and_a_post_without_csrf_token(admin_user, branchy):
    sd_versions = branchy_scripts_dir(branchy)
    (sd_versions / "i9_new.py").write_text(
        "revision = 'i9'\ndown_revision = 'h8'\nbranch_labels = None\ndepends_on = None\n"
    )
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    url = reverse("admin:opsapp_target_sync", args=[branchy.pk])
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403
    assert not Revision.objects.filter(catalog_id=branchy.catalog_id, revision="i9").exists()


def test_sync_now_rereads_the_script_directory(admin_client, branchy):
    (branchy_scripts_dir(branchy) / "i9_new.py").write_text(
        "revision = 'i9'\ndown_revision = 'h8'\nbranch_labels = None\ndepends_on = None\n"
    )
    response = admin_client.post(reverse("admin:opsapp_target_sync", args=[branchy.pk]), follow=True)
    assert response.status_code == 200
    assert "Synced branchy: 10 revisions" in response.content.decode()
    assert Revision.objects.filter(catalog_id=branchy.catalog_id, revision="i9", is_head=True).exists()


# ------------------------------------------------------------------ permissions
def test_a_view_only_user_reads_every_page_but_cannot_add_change_or_delete(client, auditor, branchy):
    client.force_login(auditor)
    g7 = Revision.objects.get(catalog_id=branchy.catalog_id, revision="g7")
    for url in (
        reverse("admin:opsapp_target_changelist"),
        reverse("admin:opsapp_target_change", args=[branchy.pk]),
        reverse("admin:opsapp_target_graph", args=[branchy.pk]),
        reverse("admin:opsapp_revision_changelist"),
        reverse("admin:opsapp_revision_change", args=[g7.pk]),
    ):
        assert client.get(url).status_code == 200, url
    assert client.get(reverse("admin:opsapp_target_add")).status_code == 403
    assert client.get(reverse("admin:opsapp_revision_add")).status_code == 403
    assert client.get(reverse("admin:opsapp_target_delete", args=[branchy.pk])).status_code == 403
    assert client.get(reverse("admin:opsapp_revision_delete", args=[g7.pk])).status_code == 403
    response = client.post(reverse("admin:opsapp_revision_change", args=[g7.pk]), {"message": "changed"})
    assert response.status_code == 403
    g7.refresh_from_db()
    assert g7.message == "merge left and right"


def test_a_superuser_gets_a_read_only_target_page_too(admin_client, branchy):
    page = admin_client.get(reverse("admin:opsapp_target_change", args=[branchy.pk])).content.decode()
    assert 'name="_save"' not in page
    assert admin_client.get(reverse("admin:opsapp_target_add")).status_code == 403


def test_a_staff_user_without_view_permission_is_refused_everywhere(client, outsider, branchy):
    client.force_login(outsider)
    assert client.get(reverse("admin:opsapp_target_changelist")).status_code == 403
    assert client.get(reverse("admin:opsapp_target_graph", args=[branchy.pk])).status_code == 403
    assert client.post(reverse("admin:opsapp_target_sync", args=[branchy.pk])).status_code == 403
    assert client.get(reverse("admin:opsapp_revision_changelist")).status_code == 403


# ------------------------------------------------------------------ revisions
def test_the_revision_list_filters_by_target_flags_applied_and_branch_label(admin_client, branchy):
    url = reverse("admin:opsapp_revision_changelist")
    everything = {"a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8", "x1"}
    assert ids_in_changelist(admin_client.get(url, {"target__id__exact": branchy.pk})) == everything
    assert ids_in_changelist(admin_client.get(url, {"is_head__exact": 1})) == {"h8", "x1"}
    assert ids_in_changelist(admin_client.get(url, {"is_base__exact": 1})) == {"a1", "x1"}
    assert ids_in_changelist(admin_client.get(url, {"is_branch_point__exact": 1})) == {"b2"}
    assert ids_in_changelist(admin_client.get(url, {"is_merge_point__exact": 1})) == {"g7"}
    assert ids_in_changelist(admin_client.get(url, {"applied": "pending"})) == {"h8"}
    assert ids_in_changelist(admin_client.get(url, {"applied": "applied"})) == everything - {"h8"}
    assert ids_in_changelist(admin_client.get(url, {"branch_label": "left"})) == {"c3"}
    assert ids_in_changelist(admin_client.get(url, {"branch_label": "other"})) == {"x1"}
    page = admin_client.get(url).content.decode()
    for label in ("left", "right", "other"):
        assert f"branch_label={label}" in page


def test_the_revision_search_matches_id_prefix_message_and_branch_label(admin_client, branchy):
    url = reverse("admin:opsapp_revision_changelist")
    assert ids_in_changelist(admin_client.get(url, {"q": "g7"})) == {"g7"}
    assert ids_in_changelist(admin_client.get(url, {"q": "7"})) == set()  # a prefix, not a substring
    assert ids_in_changelist(admin_client.get(url, {"q": "merge"})) == {"g7"}
    assert ids_in_changelist(admin_client.get(url, {"q": "other"})) == {"x1"}  # branch label


def test_the_revision_page_links_parents_children_and_dependencies(admin_client, branchy):
    response = admin_client.get(revision_url(branchy, "e5"))
    assert response.status_code == 200
    page = response.content.decode()
    assert revision_url(branchy, "b2") in page  # parent
    assert revision_url(branchy, "f6") in page  # child
    assert revision_url(branchy, "c3") in page  # depends_on
    assert "right creates tags" in page  # docstring / message
    merge = admin_client.get(revision_url(branchy, "g7")).content.decode()
    assert revision_url(branchy, "d4") in merge and revision_url(branchy, "f6") in merge
    assert revision_url(branchy, "h8") in merge


def test_the_revision_page_says_what_downgrading_to_it_would_revert(admin_client, branchy):
    response = admin_client.get(revision_url(branchy, "b2"))
    page = response.content.decode()
    assert "Downgrading to here would revert 5 revisions" in page
    steps = [rev for rev, _ in response.context["plan_steps"]]
    assert set(steps) == {"g7", "d4", "c3", "f6", "e5"}
    assert steps[0] == "g7"
    assert steps.index("e5") < steps.index("c3")  # e5 depends on c3, so it goes first
    try:
        add_url = reverse("admin:opsapp_rollbackrequest_add")
    except NoReverseMatch:
        assert "Request downgrade to here" not in page
    else:
        assert f"{add_url}?target=branchy&amp;to=b2" in page


def test_the_revision_page_says_why_a_downgrade_to_a_pending_revision_is_refused(admin_client, branchy):
    page = admin_client.get(revision_url(branchy, "h8")).content.decode()
    assert "Downgrading to here is not possible" in page
    assert "is not below the current heads" in page


def test_no_admin_page_imports_a_migration_file(admin_client, branchy, tmp_path):
    """After a sync, a revision file that would explode on import changes nothing for the pages."""
    sentinel = tmp_path / "imported.txt"
    f6 = next(branchy_scripts_dir(branchy).glob("f6_*.py"))
    f6.write_text(
        f"open({str(sentinel)!r}, 'w').write('imported')\nraise RuntimeError('a web request imported me')\n"
        + f6.read_text()
    )
    urls = [
        reverse("admin:opsapp_target_changelist"),
        reverse("admin:opsapp_target_change", args=[branchy.pk]),
        reverse("admin:opsapp_target_graph", args=[branchy.pk]),
        reverse("admin:opsapp_revision_changelist"),
        revision_url(branchy, "f6"),
        revision_url(branchy, "b2"),
    ]
    for url in urls:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert "a web request imported me" not in response.content.decode()
    assert not sentinel.exists()
    page = admin_client.get(reverse("admin:opsapp_target_change", args=[branchy.pk])).content.decode()
    assert "script directory changed since the last sync" in page.split('id="scripts-changed"')[1].split("</p>")[0]
    target = Target.objects.get(pk=branchy.pk)
    assert target.state == TargetState.MULTIPLE_HEADS  # the page said so; it stored nothing
    assert "script directory changed" not in target.state_detail


def test_a_depends_on_naming_a_branch_label_links_to_the_revision_carrying_it(
    admin_client, pg_url, script_dir_factory, configure_target
):
    sd = script_dir_factory()
    sd.add("r1", None)
    sd.add("r2", "r1", branch_labels="feature")
    sd.add("r3", "r1", depends_on="feature")
    configure_target("labels", pg_url, sd.ini)
    target = sync_target("labels")
    page = admin_client.get(revision_url(target, "r3")).content.decode()
    assert f'<a href="{revision_url(target, "r2")}?target={target.pk}">feature (r2)</a>' in page


def test_a_page_view_records_nothing_and_sync_now_audits_heads_moved_outside_the_console(
    admin_client, admin_user, branchy, pg_url
):
    from opsapp.models import AuditAction, AuditEvent
    from opsapp.services.catalog.sync import OUTSIDE_THE_CONSOLE

    move = "UPDATE alembic_version SET version_num = %s WHERE version_num = %s"
    pg_query(pg_url, move, ("h8", "g7"))  # a deploy outside the console moved g7 -> h8
    sync_url = reverse("admin:opsapp_target_sync", args=[branchy.pk])

    assert admin_client.get(reverse("admin:opsapp_target_changelist")).status_code == 200
    admin_client.get(reverse("admin:opsapp_target_change", args=[branchy.pk]))
    assert not AuditEvent.objects.filter(action=AuditAction.HEADS_CHANGED).exists()  # viewers only look

    admin_client.post(sync_url)
    admin_client.post(sync_url)  # same heads: no second event
    event = AuditEvent.objects.get(action=AuditAction.HEADS_CHANGED)
    assert (event.actor, event.actor_user_id, event.target_name) == (OUTSIDE_THE_CONSOLE, None, "branchy")
    assert (event.from_revision, event.to_revision) == ("g7,x1", "h8,x1")
    assert (event.detail["observed_by"], event.detail["observed_by_user_id"]) == (admin_user.username, admin_user.pk)
    assert event.detail["observed_by_ip"] == "127.0.0.1"

    pg_query(pg_url, move, ("g7", "h8"))  # and back down, recorded by the next sync
    sync_target("branchy")
    assert list(
        AuditEvent.objects.filter(action=AuditAction.HEADS_CHANGED)
        .order_by("seq")
        .values_list("to_revision", flat=True)
    ) == ["h8,x1", "g7,x1"]


def test_the_graph_and_revision_pages_still_render_when_a_script_file_fails_to_import(admin_client, branchy):
    (branchy_scripts_dir(branchy) / "zz_broken.py").write_text("revision = 'zz'\ndown_revision = 'h8'\ndef x(:\n")
    sync_target("branchy")

    graph = admin_client.get(reverse("admin:opsapp_target_graph", args=[branchy.pk]))
    assert graph.status_code == 200
    assert "zz_broken.py" in graph.content.decode()
    assert admin_client.get(reverse("admin:opsapp_revision_changelist")).status_code == 200
    assert admin_client.get(revision_url(branchy, "b2")).status_code == 200


def test_the_target_page_links_to_its_migration_history_in_the_audit_log(
    admin_client, admin_user, pg_url, branchy_scripts, configure_target
):
    from opsapp.services.actors import Actor
    from opsapp.services.audit.log import append_event
    from opsapp.services.catalog import sync as catalog

    configure_target("histo", pg_url, branchy_scripts.ini)
    target = catalog.sync_target("histo")
    append_event(action="heads_changed", outcome="info", actor=Actor.cron(), target="histo", message="moved")
    append_event(action="heads_changed", outcome="info", actor=Actor.cron(), target="elsewhere", message="other")
    page = admin_client.get(reverse("admin:opsapp_target_change", args=[target.pk])).content.decode()
    link = reverse("admin:opsapp_auditevent_changelist") + "?target_name=histo"
    assert link in page
    listing = admin_client.get(link).content.decode()
    assert "moved" in listing and "other" not in listing


def test_a_database_at_an_unknown_revision_says_unknown_instead_of_everything_pending(admin_client, branchy, pg_url):
    pg_query(pg_url, "UPDATE alembic_version SET version_num = 'zz99' WHERE version_num = 'g7'")
    admin_client.post(reverse("admin:opsapp_target_sync", args=[branchy.pk]))
    assert Target.objects.get(pk=branchy.pk).state == TargetState.UNKNOWN_REVISION

    target_page = admin_client.get(reverse("admin:opsapp_target_change", args=[branchy.pk])).content.decode()
    dashboard = admin_client.get(reverse("admin:index")).content.decode()
    graph = admin_client.get(reverse("admin:opsapp_target_graph", args=[branchy.pk])).content.decode()
    revisions = admin_client.get(reverse("admin:opsapp_revision_changelist")).content.decode()

    pending = target_page.split("field-pending_display")[1].split('<div class="readonly">')[1].split("</div>")[0]
    assert pending.strip() == "unknown"
    # The fleet matrix puts the target in its "unknown" column, not in "behind N".
    row = next(r for r in dashboard.split('id="fleet-matrix"')[1].split("<tr") if f">{branchy.name}</a>" in r)
    assert 'class="fleet-cell here state-unknown"' in row and "behind" not in row, row
    nodes = re.findall(r'<g class="node (\w+)[^"]*" data-revision="(\w+)"', graph)
    drawn = {state for state, revision in nodes if not revision.startswith("legend")}
    assert drawn == {"unknown"}, nodes
    assert "applied: unknown" in revisions and 'class="ops-flag ops-flag-pending"' not in revisions


def changelist_select(admin_client, url: str) -> str:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(url).status_code == 200
    pages = [q["sql"] for q in queries if 'ORDER BY "opsapp_revision"."catalog_id" ASC' in q["sql"]]
    assert pages, [q["sql"] for q in queries]
    # A one-page list is read whole; at 50k revisions the page is the first 100.
    return pages[-1] if " LIMIT " in pages[-1] else pages[-1] + " LIMIT 100"


@pytest.mark.parametrize("filtered", [False, True])
def test_the_revision_list_reads_its_page_from_an_index_without_sorting(admin_client, branchy, filtered):
    from django.db import connection

    url = reverse("admin:opsapp_revision_changelist")
    if filtered:
        url += f"?target__id__exact={branchy.pk}"
    sql = changelist_select(admin_client, url)
    with connection.cursor() as cursor:
        # Tiny test tables would be seq-scanned and sorted anyway; with both discouraged,
        # a Sort node remains only when no index delivers the changelist's order.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL enable_incremental_sort = off")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Sort" not in plan and "revision_catalog_pos_id" in plan, plan


def test_revision_pages_show_alembics_plan_without_building_a_revision_map(admin_client, branchy):
    from opsapp.services.catalog import planner
    from opsapp.services.errors import RevisionResolutionError

    heads = list(branchy.current_heads)
    assert heads
    planner._MAP_CACHE.clear()
    shown = {}
    for row in Revision.objects.filter(catalog_id=branchy.catalog_id):
        response = admin_client.get(revision_url(branchy, row.revision))
        assert response.status_code == 200
        shown[row.revision] = ([rev for rev, _ in response.context["plan_steps"]], response.context["plan_error"])
    # A cold page costs seconds at 10k revisions when it builds Alembic's map.
    assert not planner._MAP_CACHE

    for rev, (steps, error) in shown.items():
        try:
            plan = planner.plan_downgrade(branchy.name, rev, heads)
        except RevisionResolutionError as exc:
            assert (steps, error) == ([], str(exc)), rev
        else:
            assert (steps, error) == (plan.steps, ""), rev


def test_a_long_downgrade_preview_lists_the_first_steps_and_counts_the_rest(
    admin_client, script_dir_factory, pg_url, configure_target
):
    from opsapp.admin.revision import PREVIEW_STEPS

    sd = script_dir_factory()
    revs = [f"L{i:04d}" for i in range(PREVIEW_STEPS + 30)]
    for i, rev in enumerate(revs):
        sd.add(rev, revs[i - 1] if i else None)
    name = configure_target("long", pg_url, sd.ini)
    stamp(name, revs[-1])
    target = sync_target(name)

    response = admin_client.get(revision_url(target, revs[0]))
    page = response.content.decode()
    shown = [rev for rev, _ in response.context["plan_steps"]]
    assert shown == revs[:0:-1][:PREVIEW_STEPS]
    assert "Downgrading to here would revert 129 revisions" in page
    assert "and 29 more" in page
