"""The rollback request admin and the dashboard, driven through Django's test client against real targets."""

from __future__ import annotations

import pytest
from django.core import mail
from django.urls import reverse

from opsapp.models import AuditAction, AuditEvent, RollbackRequest, RollbackStatus
from tests.admin_fixtures import build_world, codes_in_outbox, target_columns, target_heads
from tests.conftest import pg_query
from tests.operations_support import run_queued_jobs

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(pg_url, branchy_scripts, configure_target, operator, approver):
    return build_world(pg_url=pg_url, scripts=branchy_scripts, configure_target=configure_target, requester=operator)


@pytest.fixture
def bare_world(pg_url, branchy_scripts, configure_target, operator, approver):
    """A synced target with data but no snapshot and no request yet."""
    return build_world(
        pg_url=pg_url,
        scripts=branchy_scripts,
        configure_target=configure_target,
        requester=operator,
        with_snapshot=False,
        with_request=False,
    )


def url(name: str, *args) -> str:
    return reverse(f"admin:opsapp_rollbackrequest_{name}", args=args)


def unchanged(world) -> None:
    """The target is still at its heads with its schema and data."""
    assert target_heads(world.url) == ["h8", "x1"]
    assert target_columns(world.url, "items") == ["id", "name", "note", "price"]
    assert pg_query(world.url, "SELECT count(*), count(price) FROM items") == [(3, 2)]


# ----------------------------------------------------------------------- request form
def test_the_request_form_prefills_target_and_revision_from_the_query_string(client, bare_world, operator):
    client.force_login(operator)
    page = client.get(url("add") + f"?target={bare_world.name}&to=g7").content.decode()
    assert 'value="g7"' in page
    assert f'<option value="{bare_world.name}" selected>' in page
    assert "Request downgrade" in page


def test_requesting_a_downgrade_shows_the_plan_sql_destructive_rows_and_gates_but_never_the_code(
    client, bare_world, operator, approver
):
    client.force_login(operator)
    response = client.post(url("add"), {"target": bare_world.name, "to": "g7", "reason": "checkout broken"})
    req = RollbackRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == url("change", req.pk)
    assert req.requested_by_username == "olga" and req.steps == ["h8"]
    assert [m.to for m in mail.outbox] == [[approver.email]]
    (code,) = codes_in_outbox()

    page = client.get(url("change", req.pk)).content.decode()
    assert 'id="gate-checklist"' in page and "snapshot" in page
    assert 'id="plan"' in page and "<code>h8</code>" in page
    # The destructive statement is highlighted and carries the live counts: 3 rows, 2 non-null prices.
    assert '<span class="destructive">' in page and "DROP COLUMN price" in page
    row = page.split('<tr class="destructive-row">')[1].split("</tr>")[0]
    assert "price" in row and "<strong>3</strong>" in row and "<strong>2</strong>" in row
    assert "anton" in page  # recipients are shown...
    assert code not in page  # ...the code never is
    assert code not in client.get(url("execute", req.pk)).content.decode()
    unchanged(bare_world)


def test_the_sql_preview_is_not_double_spaced_but_keeps_a_blank_line_between_steps(client, world, operator):
    """Alembic's offline SQL has a blank line after every statement; the page shows one per step only."""
    import html
    import re

    client.force_login(operator)
    req = world.request
    assert "\n\n" in req.sql_preview  # what Alembic rendered (stored and hashed as is)
    page = client.get(url("change", req.pk)).content.decode()
    markup = page.split('<pre class="ops-sql"')[1].split(">", 1)[1].split("</pre>")[0]
    # A destructive line is a display:block span: it ends its own line.
    pre = html.unescape(markup.replace('<span class="destructive">', "").replace("</span>", "\n"))
    shown = pre.split("\n")
    statements = [line for line in req.sql_preview.splitlines() if line.strip()]
    assert [line for line in shown if line.strip()] == statements  # nothing lost, order kept
    text = "\n".join(line.rstrip() for line in pre.splitlines())
    blocks = [block for block in re.split(r"\n\s*\n", text.strip()) if block.strip() not in ("", "COMMIT;")]
    steps = [line for line in statements if line.startswith("-- Running downgrade")]
    assert len(blocks) == len(steps) + (0 if statements[0].startswith("-- ") else 1)
    assert all(block.lstrip().startswith("-- Running downgrade") for block in blocks[-len(steps) :])


def test_an_unknown_revision_is_refused_with_the_planners_message_and_nothing_is_created(client, bare_world, operator):
    client.force_login(operator)
    response = client.post(url("add"), {"target": bare_world.name, "to": "zzz999", "reason": "typo"})
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="request-refusal"' in page and "zzz999" in page
    assert not RollbackRequest.objects.exists()
    assert mail.outbox == []
    unchanged(bare_world)


def test_a_request_without_a_reason_is_refused(client, bare_world, operator):
    client.force_login(operator)
    response = client.post(url("add"), {"target": bare_world.name, "to": "g7", "reason": "   "})
    assert response.status_code == 200
    assert "Give a reason for the downgrade." in response.content.decode()
    assert not RollbackRequest.objects.exists()
    unchanged(bare_world)


# ----------------------------------------------------------------------- execution
def test_a_wrong_code_is_refused_by_the_code_gate_and_changes_nothing(client, world, operator):
    client.force_login(operator)
    before = AuditEvent.objects.count()
    response = client.post(url("execute", world.request.pk), {"code": "00000000", "confirmed": "yes"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Refused by gate &#x27;code&#x27;" in page or "Refused by gate 'code'" in page
    unchanged(world)
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.PENDING and world.request.code_attempts == 1
    refusals = AuditEvent.objects.filter(seq__gt=before, request_id=world.request.pk, outcome="refused")
    assert refusals.exists()


def test_without_a_snapshot_the_snapshot_gate_refuses_even_the_right_code(
    client, pg_url, branchy_scripts, configure_target, operator, approver
):
    world = build_world(
        pg_url=pg_url,
        scripts=branchy_scripts,
        configure_target=configure_target,
        requester=operator,
        with_snapshot=False,
    )
    client.force_login(operator)
    page = client.post(
        url("execute", world.request.pk), {"code": codes_in_outbox()[-1], "confirmed": "yes"}
    ).content.decode()
    assert "Refused by gate &#x27;snapshot&#x27;" in page
    unchanged(world)
    assert AuditEvent.objects.filter(request_id=world.request.pk, outcome="refused").exists()


def test_take_snapshot_now_then_the_right_code_downgrades_and_shows_the_new_heads(
    client, pg_url, branchy_scripts, configure_target, operator, approver
):
    world = build_world(
        pg_url=pg_url,
        scripts=branchy_scripts,
        configure_target=configure_target,
        requester=operator,
        with_snapshot=False,
    )
    client.force_login(operator)
    response = client.post(url("takesnapshot", world.request.pk))
    # The request answers at once with the operation's page; a worker takes the snapshot.
    operation_page = response.url
    assert response.status_code == 302 and "/opsapp/operation/" in operation_page
    assert "queued" in client.get(operation_page).content.decode()
    assert run_queued_jobs() == 1
    assert "taken and verified" in client.get(operation_page).content.decode()
    world.request.refresh_from_db()
    assert world.request.snapshot is not None and world.request.snapshot.status == "verified"

    response = client.post(url("execute", world.request.pk), {"code": codes_in_outbox()[-1], "confirmed": "yes"})
    assert response.status_code == 302 and "/opsapp/operation/" in response.url
    assert target_heads(world.url) != ["g7", "x1"]  # queued, not run in the request
    assert run_queued_jobs() == 1
    page = client.get(response.url).content.decode()
    assert "Heads now: g7, x1" in page or "Heads now: x1, g7" in page
    assert target_heads(world.url) == ["g7", "x1"]
    assert target_columns(world.url, "items") == ["id", "name", "note"]
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.SUCCEEDED
    assert AuditEvent.objects.filter(request_id=world.request.pk, action=AuditAction.ROLLBACK_SUCCEEDED).exists()


def test_attaching_an_existing_verified_snapshot_from_the_request_page(
    client, pg_url, branchy_scripts, configure_target, operator, approver
):
    world = build_world(
        pg_url=pg_url,
        scripts=branchy_scripts,
        configure_target=configure_target,
        requester=operator,
        with_snapshot=False,
    )
    from opsapp.services.actors import Actor
    from opsapp.services.snapshots import lifecycle as snapshots

    snap = snapshots.take_snapshot(world.name, actor=Actor.from_user(operator))
    client.force_login(operator)
    page = client.get(url("change", world.request.pk)).content.decode()
    assert f'<option value="{snap.pk}">' in page
    client.post(url("attach", world.request.pk), {"snapshot": snap.pk})
    world.request.refresh_from_db()
    assert world.request.snapshot_id == snap.pk
    assert AuditEvent.objects.filter(request_id=world.request.pk, action=AuditAction.SNAPSHOT_ATTACHED).exists()


def test_reissuing_the_code_kills_the_old_one(client, world, operator):
    client.force_login(operator)
    old = codes_in_outbox()[-1]
    response = client.post(url("reissue", world.request.pk), follow=True)
    assert "A new code was sent to: anton" in response.content.decode()
    new = codes_in_outbox()[-1]
    assert new != old
    page = client.post(url("execute", world.request.pk), {"code": old, "confirmed": "yes"}).content.decode()
    assert "Refused by gate &#x27;code&#x27;" in page
    unchanged(world)


def test_a_cancelled_request_cannot_be_executed(client, world, operator):
    client.force_login(operator)
    client.post(url("cancel", world.request.pk))
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.CANCELLED
    page = client.get(url("execute", world.request.pk)).content.decode()
    assert "cannot be executed" in page and 'id="execute-form"' not in page
    response = client.post(url("execute", world.request.pk), {"code": codes_in_outbox()[-1], "confirmed": "yes"})
    assert "Refused by gate &#x27;request&#x27;" in response.content.decode()
    unchanged(world)


def test_action_urls_accept_only_post(client, world, operator):
    client.force_login(operator)
    for verb in ("attach", "takesnapshot", "reissue", "cancel"):
        assert client.get(url(verb, world.request.pk)).status_code == 405
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.PENDING


def test_nobody_can_change_or_delete_a_stored_request(client, world, admin_user):
    client.force_login(admin_user)
    assert client.post(url("change", world.request.pk), {"reason": "rewritten"}).status_code == 403
    assert client.post(url("delete", world.request.pk), {"post": "yes"}).status_code == 403
    world.request.refresh_from_db()
    assert world.request.reason == "price column broke checkout"


# ----------------------------------------------------------------------- dashboard
def test_the_dashboard_shows_targets_snapshot_age_open_requests_and_latest_events(client, world, operator):
    client.force_login(operator)
    page = client.get(reverse("admin:index")).content.decode()
    assert 'id="dashboard-targets"' in page and world.name in page and "at head" in page
    targets = page.split('id="dashboard-targets"')[1].split("</table>")[0]
    assert f"#{world.snapshot.pk}" in targets and " old" in targets
    requests = page.split('id="dashboard-requests"')[1].split("</table>")[0]
    assert f"#{world.request.pk}" in requests and "ready so far" in requests
    events = page.split('id="dashboard-audit"')[1].split("</table>")[0]
    latest = AuditEvent.objects.order_by("-seq").first()
    assert f">{latest.seq}<" in events and latest.get_action_display() in events


def test_the_list_and_the_dashboard_never_connect_to_a_target_only_the_request_page_does(
    client, world, operator, configure_target
):
    # The target goes down: a live gate check per row would cost a connect timeout each.
    configure_target(world.name, "postgresql+psycopg://postgres@127.0.0.1:1/down", world.scripts.ini)
    client.force_login(operator)
    for page_url, table in ((url("changelist"), 'id="result_list"'), (reverse("admin:index"), "dashboard-requests")):
        page = client.get(page_url).content.decode()
        row = page.split(table)[1].split("</table>")[0]
        assert f"#{world.request.pk}" in row or f">{world.request.pk}<" in row
        assert "ready so far" in row and "unreachable" not in row
    live = client.get(url("change", world.request.pk)).content.decode()
    checklist = live.split('id="gate-checklist"')[1].split("</table>")[0]
    assert "unreachable" in checklist


def test_the_list_and_the_dashboard_say_blocked_at_rehearsal_until_a_required_rehearsal_succeeded(
    client, world, operator, settings
):
    """The stored-fields summary knew five gates: with rehearsals required it said "ready so far" unrehearsed."""
    from opsapp.models import Rehearsal

    settings.OPS_REQUIRE_REHEARSAL = True
    client.force_login(operator)
    for page_url, table in ((url("changelist"), 'id="result_list"'), (reverse("admin:index"), "dashboard-requests")):
        row = client.get(page_url).content.decode().split(table)[1].split("</table>")[0]
        assert "blocked at &#x27;rehearsal&#x27;: not rehearsed yet" in row, row
    # A failed rehearsal of this plan on this snapshot blocks too; a successful one lets the summary go on.
    common = {
        "request": world.request,
        "snapshot": world.snapshot,
        "plan_fingerprint": world.request.plan_fingerprint,
        "scratch_name": "ops_rehearsal_test",
    }
    Rehearsal.objects.create(status="failed", **common)
    row = client.get(url("changelist")).content.decode().split('id="result_list"')[1].split("</table>")[0]
    assert "blocked at &#x27;rehearsal&#x27;: the latest rehearsal failed" in row, row
    Rehearsal.objects.create(status="succeeded", **common)
    row = client.get(url("changelist")).content.decode().split('id="result_list"')[1].split("</table>")[0]
    assert "ready so far" in row, row


def test_the_list_summary_names_the_first_blocked_gate_from_stored_fields(client, world, operator):
    RollbackRequest.objects.filter(pk=world.request.pk).update(snapshot=None)
    client.force_login(operator)
    page = client.get(url("changelist")).content.decode()
    assert "blocked at &#x27;snapshot&#x27;: no snapshot attached" in page


def test_the_execute_form_marks_the_code_as_sensitive_for_error_reports(client, world, operator):
    client.force_login(operator)
    response = client.post(url("execute", world.request.pk), {"code": "00000000", "confirmed": "yes"})
    assert response.wsgi_request.sensitive_post_parameters == ("code",)


def test_the_dashboard_shows_nothing_to_a_staff_user_without_permissions(client, world, outsider):
    client.force_login(outsider)
    page = client.get(reverse("admin:index")).content.decode()
    assert 'id="ops-dashboard"' not in page and world.name not in page


# ----------------------------------------------------------------------- the embedded demo
def test_the_demo_walk_through_works_in_the_admin_on_the_embedded_sqlite_target(
    client, tmp_path, configure_target, operator, approver
):
    """README's walk-through: revision page -> request -> take snapshot now -> code from the mail -> executed."""
    import sqlite3

    from opsapp.demo.seed import seed_demo
    from opsapp.models import Revision
    from opsapp.services.catalog import sync as catalog
    from tests.conftest import repo_path

    db = tmp_path / "shop.sqlite3"
    configure_target("shop", f"sqlite:///{db}", repo_path("alembic.ini"))
    seed_demo("shop")
    catalog.sync_target("shop")
    client.force_login(operator)

    revision = Revision.objects.get(catalog__targets__name="shop", revision="a7d3b8c2e18b")
    page = client.get(reverse("admin:opsapp_revision_change", args=[revision.pk])).content.decode()
    link = url("add") + "?target=shop&amp;to=a7d3b8c2e18b"
    assert link in page
    response = client.post(url("add"), {"target": "shop", "to": "a7d3b8c2e18b", "reason": "refunds release broke"})
    req = RollbackRequest.objects.get()
    assert response.status_code == 302
    assert req.steps == ["c8a1d5f3b7ad", "b2e6f4a9d39c"]
    client.post(url("takesnapshot", req.pk))
    assert run_queued_jobs() == 1
    req.refresh_from_db()
    assert req.snapshot is not None and req.snapshot.status == "verified"

    response = client.post(url("execute", req.pk), {"code": codes_in_outbox()[-1], "confirmed": "yes"})
    assert run_queued_jobs() == 1
    assert "Heads now: a7d3b8c2e18b" in client.get(response.url).content.decode()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("a7d3b8c2e18b",)]
        assert "refunds" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_request_left_running_by_a_dead_process_is_marked_interrupted_when_an_operator_presses_reconcile(
    client, world, operator, auditor
):
    RollbackRequest.objects.filter(pk=world.request.pk).update(status=RollbackStatus.RUNNING)
    reconcile_url = reverse("admin:opsapp_rollbackrequest_reconcile")
    client.force_login(auditor)
    page = client.get(url("changelist")).content.decode()
    assert 'id="reconcile"' not in page
    assert client.post(reconcile_url).status_code == 403
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.RUNNING  # an auditor changes nothing

    client.force_login(operator)
    page = client.get(url("changelist")).content.decode()
    detail = client.get(url("change", world.request.pk)).content.decode()
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.RUNNING  # nor does an operator's page load
    assert 'id="reconcile"' in page and 'id="reconcile-form"' in detail

    page = client.post(reconcile_url, {"next": url("change", world.request.pk)}, follow=True).content.decode()
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.INTERRUPTED
    assert f"Rollback request #{world.request.pk} was interrupted" in page
    event = AuditEvent.objects.get(request_id=world.request.pk, action=AuditAction.ROLLBACK_INTERRUPTED)
    assert event.actor == operator.username
    unchanged(world)


def test_every_label_the_readme_walk_through_names_is_on_the_pages_it_visits(client, world, operator):
    """README's "Walk through a guarded downgrade": each **bold** label is a real link, button or heading."""
    import html
    import re

    from opsapp.models import Revision
    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Walk through a guarded downgrade", 1)[1].split("\n## ", 1)[0]
    labels = {part.strip() for bold in re.findall(r"\*\*(.+?)\*\*", section, re.S) for part in bold.split("→")}
    assert {"Graph", "Take snapshot", "Request downgrade to here", "Verification code"} <= labels
    labels.discard("shop")  # the demo target's name; this world's target is another

    client.force_login(operator)
    revision = Revision.objects.get(catalog_id=world.target.catalog_id, revision="g7")
    pages = [
        reverse("admin:index"),
        reverse("admin:opsapp_target_change", args=[world.target.pk]),
        reverse("admin:opsapp_revision_change", args=[revision.pk]),
        url("change", world.request.pk),
        url("execute", world.request.pk),
    ]
    seen = ""
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        seen += html.unescape(response.content.decode())
    missing = [label for label in sorted(labels) if label not in seen]
    assert missing == [], f"README names labels no page shows: {missing}"


def test_alembic_version_bookkeeping_is_not_highlighted_as_destructive():
    """A branch that ends deletes its alembic_version row: no data is lost, so it is not shown in red."""
    from opsapp.admin.rollback_forms import sql_lines

    sql = (
        "-- Running downgrade a -> b\n\nDROP TABLE daily_totals;\n\n"
        "DELETE FROM alembic_version WHERE alembic_version.version_num = 'a';\n\nDELETE FROM orders;\n"
    )
    marked = {line.text: line.destructive for line in sql_lines(sql)}
    assert marked["DROP TABLE daily_totals;"] and marked["DELETE FROM orders;"]
    assert not marked["DELETE FROM alembic_version WHERE alembic_version.version_num = 'a';"]
