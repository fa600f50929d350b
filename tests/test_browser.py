"""The main flows in a real browser: Debian's Chromium, headless, driven by Playwright.

Against pytest-django's live server on PostgreSQL with the demo target `shop`
(its real 12-revision history on a throwaway database, seeded with data).
Two-factor sign-in is on, as in production. An operator logs in (password,
then a token computed from their authenticator's secret), looks at the target and its graph, takes a snapshot,
requests a downgrade to the merge 9c4f1e7b5d7a, reads what it would destroy,
is refused with a wrong code and succeeds with the one the approver was
mailed; an auditor reads the log, cannot change anything, and exports it.

Each main page is saved to screenshots/NN-<step>.png for a person to look at.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from browser_support import (
    chromium_browser,
    codes_mailed_to,
    csrf_post,
    log_in,
    messages_text,
    navigate,
    new_page,
    screenshot,
    submit_login,
)
from conftest import REPO_ROOT, pg_query
from django.core import mail
from django.urls import reverse
from operations_support import start_worker, stop_worker, wait_until_finished, worker_env

from opsapp.models import AuditEvent, RollbackRequest, RollbackStatus, Snapshot
from opsapp.services.audit import offline
from opsapp.services.audit.keys import public_key, public_key_pem
from tests.two_factor_support import make_device

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HEAD = "c8a1d5f3b7ad"
MERGE = "9c4f1e7b5d7a"
REVERTED = ["c8a1d5f3b7ad", "b2e6f4a9d39c", "a7d3b8c2e18b"]  # refunds, orders.note, accounts.email
TRAIL = [
    "rollback requested",
    "code issued",
    "snapshot attached",
    "rollback refused",
    "code accepted, downgrade queued",
    "rollback started",
    "rollback succeeded",
]


@pytest.fixture(autouse=True)
def _role_groups() -> None:
    """Re-create the role groups before the personas (their data migration's rows).

    An earlier `transaction=True` test's flush deleted them; post_migrate re-created the permissions.
    """
    from django.contrib.auth.models import Group, Permission

    from opsapp.roles import ROLES

    for name, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        codenames = [perm.split(".")[1] for perm in perms]
        group.permissions.set(Permission.objects.filter(content_type__app_label="opsapp", codename__in=codenames))
        assert group.permissions.count() == len(perms), name


@pytest.fixture
def shop(pg_url, configure_target):
    """Target `shop`: the demo history on a throwaway PostgreSQL database, at its head, with data, synced."""
    from opsapp.demo.seed import seed_demo
    from opsapp.services.catalog.sync import sync_target

    configure_target("shop", pg_url, REPO_ROOT / "alembic.ini")
    seed_demo("shop")
    target = sync_target("shop")
    assert target.current_heads == [HEAD]
    return target


@pytest.fixture
def worker(shop, settings):
    """One real `manage.py db_worker` beside the live server, as `make run` starts them."""
    proc = start_worker(worker_env(settings))
    yield proc
    stop_worker(proc)


def follow_operation(page) -> str:
    """On an operation's page: wait until its worker ends it, reload, and return the result or error text."""
    from opsapp.models import Operation

    op_id = int(re.search(r"/operation/(\d+)/", page.url).group(1))
    op = wait_until_finished(op_id)
    page.reload()
    assert page.locator("#operation-state").inner_text() == op.state
    shown = page.locator("#operation-result, #operation-error")
    assert Operation.objects.get(pk=op_id).state == op.state
    return shown.first.inner_text()


@pytest.fixture
def browser(live_server, settings):
    settings.OPS_REQUIRE_2FA = True  # as in production: every persona signs in with a token too
    with chromium_browser() as browser:
        yield browser


def heads(url: str) -> list[str]:
    return [row[0] for row in pg_query(url, "SELECT version_num FROM alembic_version ORDER BY 1")]


def table_exists(url: str, table: str) -> bool:
    return bool(pg_query(url, "SELECT 1 FROM information_schema.tables WHERE table_name = %s", (table,)))


def is_subsequence(wanted: list[str], seen: list[str]) -> bool:
    remaining = iter(seen)
    return all(item in remaining for item in wanted)


def destructive_row(page, *cells: str):
    """The row of the destructive-statements table whose text contains every one of `cells`."""
    rows = page.locator("#destructive tbody tr")
    for text in cells:
        rows = rows.filter(has_text=re.compile(rf"\b{re.escape(text)}\b"))
    assert rows.count() == 1, f"no single destructive row with {cells}: {page.locator('#destructive').inner_text()}"
    return rows.first.inner_text()


# --------------------------------------------------------------------- the operator
def test_an_operator_downgrades_shop_through_the_browser_with_the_approvers_code(
    live_server, browser, shop, pg_url, operator, approver, worker
):
    page = new_page(browser, live_server.url)

    # Log in through the form.
    log_in(page, "olga", "pw-olga")
    screenshot(page, "01-login")
    submit_login(page, make_device(operator))
    assert "shop" in page.locator("#content").inner_text()
    screenshot(page, "02-dashboard")

    # The target page: state and current revision, read from the real database.
    page.goto(reverse("admin:opsapp_target_changelist"))
    navigate(page, page.locator("#result_list").get_by_role("link", name="shop", exact=True))
    state = page.locator("#target-state")
    assert "at head" in state.inner_text()
    assert HEAD in state.inner_text()
    screenshot(page, "03-target")

    # A snapshot through the target page's button: queued at once, taken by the worker, verified, listed.
    navigate(page, page.locator(".object-tools").get_by_role("button", name="Take snapshot"))
    assert re.search(r"Snapshot of shop queued as operation #\d+", messages_text(page)), messages_text(page)
    result = follow_operation(page)
    assert re.search(r"Snapshot #\d+ of shop taken and verified", result), result
    screenshot(page, "04-snapshot-taken")
    snap = Snapshot.objects.get()
    page.goto(reverse("admin:opsapp_target_change", args=[shop.pk]))
    assert snap.status == "verified" and snap.heads == [HEAD]
    navigate(page, page.locator(".object-tools").get_by_role("link", name="Snapshots", exact=True))
    listed = page.locator("#result_list tbody tr")
    assert listed.count() == 1 and "verified" in listed.first.inner_text()
    screenshot(page, "05-snapshots")

    # The revision graph: an inline SVG with one node per revision.
    page.go_back()
    navigate(page, page.locator(".object-tools").get_by_role("link", name="Graph", exact=True))
    nodes = page.locator("svg.ops-graph g.node[data-revision]")
    assert nodes.count() == 12
    assert page.locator(f'svg.ops-graph g.node[data-revision="{MERGE}"]').count() == 1
    assert page.locator("svg.ops-graph path.edge").count() >= 12
    screenshot(page, "06-graph")

    # Click the merge revision in the graph, then "Request downgrade to here".
    navigate(page, page.locator(f'svg.ops-graph g.node[data-revision="{MERGE}"] a'))
    assert MERGE in page.locator("#content").inner_text()
    steps = page.locator("#downgrade-steps li")
    assert [steps.nth(i).get_attribute("data-revision") for i in range(steps.count())] == REVERTED
    screenshot(page, "07-revision")
    navigate(page, page.locator(".object-tools").get_by_role("link", name="Request downgrade to here"))
    assert page.get_by_label("Downgrade to revision").input_value() == MERGE
    page.get_by_label("Reason").fill("Refunds release corrupts balances; back to the merge.")
    screenshot(page, "08-request-form")
    navigate(page, page.get_by_role("button", name="Request downgrade"))

    # The request page: plan, SQL preview, destructive statements with live row counts.
    assert re.search(r"Rollback request #\d+ created", messages_text(page)), messages_text(page)
    request = RollbackRequest.objects.get()
    assert request.to_revision == MERGE and request.requested_by_username == "olga"
    plan = page.locator("#plan").inner_text()
    assert all(rev in plan for rev in REVERTED)
    sql = page.locator("pre.ops-sql").inner_text()
    assert "DROP TABLE refunds" in sql
    assert re.search(r"ALTER TABLE orders DROP COLUMN note", sql)
    refunds = destructive_row(page, "refunds")
    assert re.search(r"\b8\b", refunds), refunds  # the 8 seeded refunds
    note = destructive_row(page, "orders", "note")
    assert re.search(r"\b100\b", note) and re.search(r"\b33\b", note), note  # 100 orders, 33 notes lost
    email = destructive_row(page, "accounts", "email")
    assert re.search(r"\b20\b", email), email
    screenshot(page, "09-request")

    # Attach the verified snapshot; the snapshot gate passes.
    page.locator("#attach-form select").select_option(value=str(snap.pk))
    navigate(page, page.get_by_role("button", name="Attach snapshot"))
    assert f"Snapshot #{snap.pk} attached" in messages_text(page)
    snapshot_gate = page.locator("#gate-checklist tbody tr").filter(has_text="snapshot")
    assert "passes" in snapshot_gate.inner_text(), snapshot_gate.inner_text()
    screenshot(page, "10-snapshot-attached")

    # The code went to the approver only, by email; the page never shows it.
    assert [m.to for m in mail.outbox] == [[approver.email]]
    (code,) = codes_mailed_to(mail.outbox, approver.email)
    assert code not in page.content()

    # Executing is two steps: the confirmation page restates what will happen, then takes the code.
    navigate(page, page.get_by_role("link", name="Execute the downgrade…"))
    facts = page.locator("#confirmation-facts").inner_text()
    assert "shop" in facts and HEAD in facts and MERGE in facts, facts
    assert "DROP TABLE refunds: 8 rows" in facts and "orders.note: 33 non-null values" in facts, facts
    screenshot(page, "10b-execute-confirmation")

    # A wrong code: refused by the gate 'code'; nothing changed on the target.
    wrong = "00000000" if code != "00000000" else "11111111"
    page.get_by_role("textbox", name="Verification code").fill(wrong)
    navigate(page, page.get_by_role("button", name="Yes, downgrade shop"))
    refusal = page.locator("#execute-error").inner_text()
    assert "Refused by gate 'code'" in refusal, refusal
    code_gate = page.locator('#gate-checklist tr[data-gate="code"]').inner_text()
    assert "refuses" in code_gate and "at execution" not in code_gate, code_gate
    assert page.locator("#refusal-fix").get_by_role("button", name="Re-issue code").count() == 1
    assert heads(pg_url) == [HEAD] and table_exists(pg_url, "refunds")
    request.refresh_from_db()
    assert request.status == RollbackStatus.PENDING and request.code_attempts == 1
    screenshot(page, "11-wrong-code")

    # The right code: accepted and queued; the worker checks the gate again and downgrades to the merge.
    page.get_by_role("textbox", name="Verification code").fill(code)
    navigate(page, page.get_by_role("button", name="Yes, downgrade shop"))
    assert "Code accepted; the downgrade is queued as operation" in messages_text(page), messages_text(page)
    done = follow_operation(page)
    assert "Downgraded 'shop' to" in done and f"Heads now: {MERGE}." in done, done
    assert heads(pg_url) == [MERGE] and not table_exists(pg_url, "refunds")
    request.refresh_from_db()
    assert request.status == RollbackStatus.SUCCEEDED
    screenshot(page, "12-rollback-succeeded")

    # The target page shows the new current revision.
    page.goto(reverse("admin:opsapp_target_change", args=[shop.pk]))
    state = page.locator("#target-state").inner_text()
    assert "behind (3 pending)" in state and MERGE in state, state
    screenshot(page, "13-target-after")

    # The audit log, searched for the request's number, shows its whole trail in order.
    navigate(page, page.get_by_role("link", name="Home"))
    navigate(page, page.locator(".app-opsapp").get_by_role("link", name="Audit events"))
    page.locator("#searchbar").fill(str(request.pk))
    navigate(page, page.get_by_role("button", name="Search"))
    rows = page.locator("#result_list tbody tr").filter(has=page.get_by_role("link", name=f"#{request.pk}", exact=True))
    trail = [text.strip() for text in rows.locator("td.field-action").all_inner_texts()][::-1]
    assert is_subsequence(TRAIL, trail), trail
    screenshot(page, "14-audit-trail")
    page.context.close()


# ---------------------------------------------------------------------- the auditor
@pytest.fixture
def executed_rollback(shop, operator, approver):
    """The operator's rollback of shop to the merge, done through the services: requested, refused once, executed."""
    from opsapp.services.actors import Actor
    from opsapp.services.errors import GateRefused
    from opsapp.services.rollback import requests as rollback
    from opsapp.services.snapshots.lifecycle import take_snapshot

    actor = Actor.from_user(operator)
    snap = take_snapshot("shop", actor=actor)
    request = rollback.create_request(
        target_name="shop", to=MERGE, reason="refunds release broken", actor=actor, snapshot_id=snap.pk
    )
    (code,) = codes_mailed_to(mail.outbox, approver.email)
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)
    with pytest.raises(GateRefused):
        rollback.execute_request(request.pk, code=wrong, actor=actor)
    result = rollback.execute_request(request.pk, code=code, actor=actor)
    assert result.status == RollbackStatus.SUCCEEDED
    return request


def test_an_auditor_reads_the_audit_log_cannot_change_anything_and_downloads_the_csv_export(
    live_server, browser, executed_rollback, auditor, pg_url
):
    from opsapp.services.audit.chain import EXPORT_FIELDS

    page = new_page(browser, live_server.url)
    log_in(page, "aude", "pw-aude")
    submit_login(page, make_device(auditor))

    # The list, read-only: no add link, no bulk actions; export buttons are there.
    page.goto(reverse("admin:opsapp_auditevent_changelist"))
    listing = page.locator("#result_list").inner_text()
    for action in ("rollback requested", "rollback refused", "rollback succeeded"):
        assert action in listing
    assert page.locator("a.addlink").count() == 0
    assert page.locator("select[name=action]").count() == 0
    screenshot(page, "15-auditor-audit-log")

    # One event: shown read-only, no button or delete link on the page.
    navigate(
        page,
        page.locator("#result_list tbody tr").filter(has_text="rollback succeeded").first.get_by_role("link").first,
    )
    assert "rollback succeeded" in page.locator("#content").inner_text()
    content = page.locator("#content-main")
    assert content.get_by_role("button").count() == 0
    assert content.locator("input[type=submit]").count() == 0
    assert page.locator("a.deletelink").count() == 0
    screenshot(page, "16-auditor-event")
    event = AuditEvent.objects.filter(action="rollback_succeeded").get()
    before = (AuditEvent.objects.count(), RollbackRequest.objects.count(), Snapshot.objects.count())

    # Changing anything is refused on the server, whatever the page shows.
    change_url = reverse("admin:opsapp_auditevent_change", args=[event.pk])
    delete = page.goto(reverse("admin:opsapp_auditevent_delete", args=[event.pk]))
    assert delete.status == 403
    screenshot(page, "17-auditor-refused")
    assert csrf_post(page, change_url, {"message": "rewritten"}).status == 403
    assert csrf_post(page, reverse("admin:opsapp_auditevent_delete", args=[event.pk]), {"post": "yes"}).status == 403
    assert page.goto(reverse("admin:opsapp_rollbackrequest_add")).status == 403
    assert (
        csrf_post(page, reverse("admin:opsapp_snapshot_take"), {"target": str(executed_rollback.target_id)}).status
        == 403
    )
    execute_url = reverse("admin:opsapp_rollbackrequest_execute", args=[executed_rollback.pk])
    assert csrf_post(page, execute_url, {"code": "12345678"}).status == 403
    assert (AuditEvent.objects.count(), RollbackRequest.objects.count(), Snapshot.objects.count()) == before
    assert heads(pg_url) == [MERGE]
    event.refresh_from_db()
    assert event.message != "rewritten"

    # The CSV export, downloaded through its button (a POST: it is audited): the documented header and events.
    page.goto(reverse("admin:opsapp_auditevent_changelist"))
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export CSV").click()
    download = download_info.value
    assert re.fullmatch(r"audit-log-\w+\.csv", download.suggested_filename)
    with open(download.path(), encoding="utf-8", newline="") as handle:
        text = handle.read()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(EXPORT_FIELDS)
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    actions = [r["action"] for r in records if r.get("request_id") == str(executed_rollback.pk)]
    for action in ("rollback_requested", "code_issued", "rollback_refused", "rollback_started", "rollback_succeeded"):
        assert action in actions, f"{action} not exported: {actions}"

    # The request's evidence bundle, from its button; it verifies offline, and a flipped byte names the member.
    page.goto(reverse("admin:opsapp_rollbackrequest_change", args=[executed_rollback.pk]))
    screenshot(page, "18-auditor-request-evidence")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download evidence").click()
    download = download_info.value
    assert download.suggested_filename == f"evidence-request-{executed_rollback.pk}.zip"
    bundle = Path(download.path())
    key = bundle.with_name("public.pem")
    key.write_bytes(public_key_pem(public_key()))
    out = io.StringIO()
    with redirect_stdout(out):
        assert offline.main([str(bundle), "--public-key", str(key)]) == 0, out.getvalue()
    assert f"request #{executed_rollback.pk}" in out.getvalue()
    with zipfile.ZipFile(bundle) as original, zipfile.ZipFile(bundle.with_name("changed.zip"), "w") as changed:
        for info in original.infolist():
            data = original.read(info)
            changed.writestr(
                info,
                data.replace(b"rollback_succeeded", b"rollback_failed") if info.filename == "events.jsonl" else data,
            )
    out = io.StringIO()
    with redirect_stdout(out):
        assert offline.main([str(bundle.with_name("changed.zip")), "--public-key", str(key)]) == 1
    assert "events.jsonl: changed since the bundle was signed" in out.getvalue()
    assert AuditEvent.objects.order_by("-seq").first().action == "evidence_exported"
    page.context.close()
