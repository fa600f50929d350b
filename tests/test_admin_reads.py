"""Reading never writes: a GET of any admin page, by any role, changes no row of the console.

The world below is built so that a page *would* want to write: the target's
heads moved outside the console since the last sync, a request is left
`running` by a dead executor (its lock is free), a configured target was never
synced and another is down. Every admin page (every registered model's URLs,
custom views included, for every object) is fetched as every persona, and
every table of the console's database must read the same afterwards.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.db import connection
from django.urls import NoReverseMatch, URLPattern, reverse

from opsapp.models import AuditAction, AuditEvent, RollbackRequest, RollbackStatus, Target
from opsapp.services.actors import Actor
from tests.admin_fixtures import build_world, target_heads
from tests.conftest import pg_query

pytestmark = pytest.mark.django_db

PERSONAS = ("admin_user", "operator", "approver", "auditor")
MOVE = "UPDATE alembic_version SET version_num = %s WHERE version_num = %s"


def console_tables() -> dict[str, tuple[int, str]]:
    """Row count and a digest of the contents of every table in the console's database."""
    state = {}
    with connection.cursor() as cur:
        for table in sorted(connection.introspection.table_names()):
            quoted = connection.ops.quote_name(table)
            cur.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {quoted} t"
            )
            state[table] = cur.fetchone()
    return state


def admin_page_urls() -> list[str]:
    """Every GET-able admin URL: the site's own pages, then each model's, filled in for every object."""
    urls = [reverse("admin:index"), reverse("admin:password_change"), reverse("admin:password_change_done")]
    urls += [reverse("admin:app_list", kwargs={"app_label": label}) for label in ("opsapp", "auth")]
    for model, model_admin in admin.site._registry.items():
        pks = [str(pk) for pk in model.objects.order_by("pk").values_list("pk", flat=True)]
        for pattern in model_admin.get_urls():
            if not isinstance(pattern, URLPattern) or not pattern.name:
                continue
            keys = set(pattern.pattern.converters)
            if not keys:
                choices = [{}]
            elif keys <= {"object_id", "id"}:
                choices = [{key: pk for key in keys} for pk in pks]
            elif keys == {"fmt"}:
                choices = [{"fmt": "csv"}, {"fmt": "jsonl"}]
            else:
                raise AssertionError(f"no values for the URL parameters {keys} of {pattern.name}")
            for kwargs in choices:
                try:
                    urls.append(reverse(f"admin:{pattern.name}", kwargs=kwargs))
                except NoReverseMatch:
                    continue
    # A few filtered lists too: filters run their own queries.
    urls += [
        reverse("admin:opsapp_rollbackrequest_changelist") + "?status__exact=running",
        reverse("admin:opsapp_revision_changelist") + "?applied=pending",
        reverse("admin:opsapp_auditevent_changelist") + "?action__exact=heads_changed",
    ]
    return urls


@pytest.fixture
def busy_world(pg_url, pg_database_factory, branchy_scripts, script_dir_factory, configure_target, operator, approver):
    """A PostgreSQL target with data, a snapshot and requests in several states, then drift everywhere."""
    from opsapp.services.rollback import requests as rollback

    world = build_world(pg_url=pg_url, scripts=branchy_scripts, configure_target=configure_target, requester=operator)
    actor = Actor.from_user(operator)
    cancelled = rollback.create_request(target_name=world.name, to="b2", reason="wrong target", actor=actor)
    rollback.cancel_request(cancelled, actor=actor)
    crashed = rollback.create_request(target_name=world.name, to="g7", reason="executor dies", actor=actor)
    # The executor died mid-run: `running`, its lock free (what reconcile would mark interrupted).
    RollbackRequest.objects.filter(pk=crashed.pk).update(status=RollbackStatus.RUNNING, code_hash="")
    # A deploy outside the console moved the heads since the last sync.
    pg_query(world.url, MOVE, ("g7", "h8"))
    # A configured target nobody synced yet, and one that is down.
    configure_target("fresh", pg_database_factory(), script_dir_factory().ini)
    configure_target("down", "postgresql://ops:s3cret@127.0.0.1:1/nowhere", branchy_scripts.ini)
    from opsapp.services.catalog import sync as catalog

    catalog.sync_target("down")
    return world


@pytest.mark.parametrize("persona", PERSONAS)
def test_no_admin_page_get_changes_a_row_for_any_role(request, client, busy_world, persona):
    user = request.getfixturevalue(persona)
    client.force_login(user)
    heads_before = target_heads(busy_world.url)
    before = console_tables()

    urls = admin_page_urls()
    assert len(urls) > 40, urls  # every model's pages, for every object
    for url in urls:
        response = client.get(url)
        assert response.status_code < 500, (url, response.status_code)
        if getattr(response, "streaming", False):
            b"".join(response.streaming_content)  # an export does its work while streaming

    after = console_tables()
    changed = {table: (before[table], after.get(table)) for table in before if before[table] != after.get(table)}
    assert not changed, f"{persona}'s GETs changed: {changed}"
    assert set(after) == set(before)
    assert target_heads(busy_world.url) == heads_before == ["g7", "x1"]
    assert RollbackRequest.objects.filter(status=RollbackStatus.RUNNING).count() == 1
    assert not Target.objects.filter(name="fresh").exists()


def test_the_target_page_shows_live_heads_that_differ_from_the_catalog_and_asks_for_a_sync(
    client, busy_world, operator
):
    client.force_login(operator)
    target = Target.objects.get(name=busy_world.name)
    page = client.get(reverse("admin:opsapp_target_change", args=[target.pk])).content.decode()
    assert 'id="live-heads-differ"' in page
    notice = page.split('id="live-heads-differ"')[1].split("</div>")[0]
    assert "g7, x1" in notice and "h8, x1" in notice and "Sync now" in notice
    listing = client.get(reverse("admin:opsapp_target_changelist")).content.decode()
    assert 'id="live-heads-differ"' in listing and busy_world.name in listing.split('id="live-heads-differ"')[1]
    assert "fresh" in listing.split('id="not-synced"')[1].split("</div>")[0]


# ------------------------------------------------------------- who observed a change
def heads_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditAction.HEADS_CHANGED).order_by("seq"))


def test_sync_revisions_records_a_head_change_as_made_outside_the_console_observed_by_the_command(busy_world):
    from django.core.management import call_command

    from opsapp.services.catalog.sync import OUTSIDE_THE_CONSOLE

    call_command("sync_revisions", "--target", busy_world.name, verbosity=0)

    [event] = heads_events()
    assert (event.actor, event.actor_user_id, event.client_ip) == (OUTSIDE_THE_CONSOLE, None, None)
    assert (event.from_revision, event.to_revision) == ("h8,x1", "g7,x1")
    assert event.detail["observed_by"].startswith("cli:")
    assert "outside the console" in event.message and event.detail["observed_by"] in event.message


def test_an_operators_sync_now_records_the_change_as_outside_the_console_with_the_operator_as_observer(
    client, busy_world, operator
):
    from opsapp.services.catalog.sync import OUTSIDE_THE_CONSOLE

    client.force_login(operator)
    target = Target.objects.get(name=busy_world.name)
    response = client.post(reverse("admin:opsapp_target_sync", args=[target.pk]), follow=True)
    assert response.status_code == 200

    [event] = heads_events()
    assert (event.actor, event.actor_user_id, event.client_ip) == (OUTSIDE_THE_CONSOLE, None, None)
    assert event.detail["observed_by"] == operator.username
    assert event.detail["observed_by_user_id"] == operator.pk
    assert event.detail["observed_by_ip"] == "127.0.0.1"
    target.refresh_from_db()
    assert target.current_heads == ["g7", "x1"]
    page = client.get(reverse("admin:opsapp_target_change", args=[target.pk])).content.decode()
    assert 'id="live-heads-differ"' not in page


def test_a_downgrade_made_by_the_console_is_not_attributed_to_outside_the_console(client, busy_world, operator):
    """The console's own execution re-syncs as the executor: its head change is not 'outside'."""
    from opsapp.services.catalog import sync as catalog
    from opsapp.services.rollback import requests as rollback
    from tests.admin_fixtures import codes_in_outbox

    actor = Actor.from_user(operator)
    pg_query(busy_world.url, MOVE, ("h8", "g7"))  # undo the outside move: the pending request plans from h8
    RollbackRequest.objects.filter(status=RollbackStatus.RUNNING).update(status=RollbackStatus.INTERRUPTED)
    catalog.sync_target(busy_world.name, actor=actor)
    assert heads_events() == []
    pending = RollbackRequest.objects.get(pk=busy_world.request.pk)
    rollback.execute_request(pending.pk, code=codes_in_outbox()[0], actor=Actor.from_user(pending.requested_by))
    assert target_heads(busy_world.url) == ["g7", "x1"]
    [event] = heads_events()
    assert (event.actor, event.detail["moved_by_request"]) == (pending.requested_by_username, pending.pk)
    assert "observed_by" not in event.detail
