"""The request pages as the three personas read them (issue 15): the confirmation step before a downgrade,
refusals that offer their fix, gate 5 after a wrong code, the approver's view, the result at the top."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from opsapp.models import AuditEvent, RollbackStatus
from tests.admin_fixtures import build_world, codes_in_outbox
from tests.operations_support import run_queued_jobs
from tests.test_admin_rollback import unchanged

pytestmark = pytest.mark.django_db


def url(name: str, *args) -> str:
    return reverse(f"admin:opsapp_rollbackrequest_{name}", args=args)


@pytest.fixture
def world(pg_url, branchy_scripts, configure_target, operator, approver):
    return build_world(pg_url=pg_url, scripts=branchy_scripts, configure_target=configure_target, requester=operator)


@pytest.fixture
def world_without_snapshot(pg_url, branchy_scripts, configure_target, operator, approver):
    return build_world(
        pg_url=pg_url,
        scripts=branchy_scripts,
        configure_target=configure_target,
        requester=operator,
        with_snapshot=False,
    )


# ------------------------------------------------------------------ the confirmation step
def test_the_request_page_links_to_a_confirmation_step_instead_of_executing_in_one_click(client, world, operator):
    client.force_login(operator)

    page = client.get(url("change", world.request.pk)).content.decode()

    assert 'id="execute-form"' not in page and 'name="code"' not in page
    assert f'href="{url("execute", world.request.pk)}"' in page


def test_the_confirmation_page_restates_target_environment_from_to_steps_and_destroyed_rows(
    client, world, operator, settings
):
    settings.OPS_ENVIRONMENT_NAME = "staging-eu"
    client.force_login(operator)

    page = client.get(url("execute", world.request.pk)).content.decode()

    facts = page.split('id="confirmation-facts"')[1].split("</table>")[0]
    assert world.name in facts and "staging-eu" in facts
    assert "<code>h8</code>" in facts and "<code>x1</code>" in facts  # from
    assert f"<code>{world.request.to_revision}</code>" in facts  # to
    assert "1 revision reverted" in facts
    assert "DROP COLUMN items.price: 2 non-null values" in facts
    assert 'name="confirmed" value="yes"' in page and f"Yes, downgrade {world.name}" in page


def test_a_post_without_the_confirmation_runs_nothing_and_shows_the_confirmation_page(client, world, operator):
    client.force_login(operator)
    before = AuditEvent.objects.count()

    response = client.post(url("execute", world.request.pk), {"code": codes_in_outbox()[-1]})

    assert response.status_code == 200
    assert 'id="confirmation-facts"' in response.content.decode()
    unchanged(world)
    world.request.refresh_from_db()
    assert world.request.status == RollbackStatus.PENDING and world.request.code_attempts == 0
    assert AuditEvent.objects.count() == before


# ------------------------------------------------------------- refusals offer the fix
def test_a_snapshot_refusal_offers_attach_snapshot_and_take_snapshot_now(client, world_without_snapshot, operator):
    from opsapp.services.actors import Actor
    from opsapp.services.snapshots import lifecycle as snapshots

    snap = snapshots.take_snapshot(world_without_snapshot.name, actor=Actor.from_user(operator))
    client.force_login(operator)

    page = client.post(
        url("execute", world_without_snapshot.request.pk), {"code": codes_in_outbox()[-1], "confirmed": "yes"}
    ).content.decode()

    assert "Refused by gate &#x27;snapshot&#x27;" in page
    fix = page.split('id="refusal-fix"')[1].split("</div>")[0]
    assert url("attach", world_without_snapshot.request.pk) in fix and f'<option value="{snap.pk}">' in fix
    assert 'value="Attach snapshot"' in fix and 'value="Take snapshot now"' in fix
    unchanged(world_without_snapshot)
    assert AuditEvent.objects.filter(request_id=world_without_snapshot.request.pk, outcome="refused").exists()


def test_after_a_wrong_code_gate_5_shows_the_refusal_on_both_pages(client, world, operator):
    client.force_login(operator)

    page = client.post(url("execute", world.request.pk), {"code": "00000000", "confirmed": "yes"}).content.decode()

    code_row = page.split('data-gate="code"')[1].split("</tr>")[0]
    assert "refuses" in code_row and "at execution" not in code_row
    assert 'value="Re-issue code"' in page.split('id="refusal-fix"')[1].split("</div>")[0]
    request_page = client.get(url("change", world.request.pk)).content.decode()
    code_row = request_page.split('data-gate="code"')[1].split("</tr>")[0]
    assert "Last attempt refused" in code_row and "1 wrong so far" in code_row
    unchanged(world)
    world.request.refresh_from_db()
    assert world.request.code_attempts == 1
    assert AuditEvent.objects.filter(request_id=world.request.pk, outcome="refused").exists()


def test_every_gate_number_the_request_page_quotes_is_the_row_of_that_gate_in_its_checklist(client, world, operator):
    """The checklist numbers the gates 1-6 (request, snapshot, rehearsal, plan, lock, code); the prose must agree."""
    client.force_login(operator)

    page = client.get(url("change", world.request.pk)).content.decode()

    rows = re.findall(r'data-gate="(\w+)"', page)
    assert rows == ["request", "snapshot", "rehearsal", "plan", "lock", "code"]
    text = re.sub(r"<[^>]+>", " ", page.split('id="plan-hash"')[1].split("</p>")[0])
    assert "plan" in text
    for number, name in re.findall(r"gate (\d) \((\w+)\)", text) + re.findall(r"(\d)\w* gate", text):
        assert rows[int(number) - 1] == name, text
    assert not re.search(r"gate \d(?! \()", text), f"a bare gate number that names no gate: {text}"


def test_while_the_downgrade_is_queued_the_request_page_says_so_and_links_its_operation(client, world, operator):
    """The code is spent when the downgrade is queued; the page still offered it as "entered at execution".

    With no worker running (or a busy one), the operator came back to a pending request whose checklist
    passed, typed the spent code again and was refused, with nothing on the page pointing at the queue.
    """
    from opsapp.models import Operation

    client.force_login(operator)
    code = codes_in_outbox()[-1]
    response = client.post(url("execute", world.request.pk), {"code": code, "confirmed": "yes"})
    op = Operation.objects.get(request=world.request)
    assert response.status_code == 302 and op.state == "queued"

    page = client.get(url("change", world.request.pk)).content.decode()

    code_row = page.split('data-gate="code"')[1].split("</tr>")[0]
    assert f"queued as operation #{op.pk}" in code_row and "attempt(s) left" not in code_row
    assert reverse("admin:opsapp_operation_change", args=[op.pk]) in page
    dashboard = client.get(reverse("admin:index")).content.decode().split('id="dashboard-requests"')[1]
    assert "spent on a queued downgrade" in dashboard.split("</table>")[0]


def test_after_a_worker_refused_the_queued_downgrade_the_page_says_the_code_is_spent(client, world, operator):
    from opsapp.models import Operation

    client.force_login(operator)
    client.post(url("execute", world.request.pk), {"code": codes_in_outbox()[-1], "confirmed": "yes"})
    Operation.objects.filter(request=world.request).update(state="failed", error="Refused at gate 'plan'.")

    page = client.get(url("change", world.request.pk)).content.decode()

    code_row = page.split('data-gate="code"')[1].split("</tr>")[0]
    assert "refuses" in code_row and "already used" in code_row and "re-issue" in code_row
    op = Operation.objects.get(request=world.request)
    assert reverse("admin:opsapp_operation_change", args=[op.pk]) in page


# ------------------------------------------------------------------- the approver's view
def test_an_approver_sees_what_to_check_who_asked_why_where_the_code_is_and_when_it_expires(client, world, approver):
    client.force_login(approver)

    page = client.get(url("change", world.request.pk)).content.decode()

    assert 'id="actions"' not in page  # no empty Actions heading
    view = page.split('id="approver-view"')[1].split("</div>")[0]
    assert "olga" in view and world.request.reason in view
    assert "in your email" in view and "expires" in view
    assert "destructive statements" in view and "plan hash" in view
    assert world.request.plan_hash[:8] in view


def test_the_approver_is_asked_to_check_the_rehearsal_when_one_is_required(client, world, approver, settings):
    """The approver's checklist (from before rehearsals existed) names the rehearsal gate's evidence too."""
    settings.OPS_REQUIRE_REHEARSAL = True
    client.force_login(approver)

    page = client.get(url("change", world.request.pk)).content.decode()

    view = page.split('id="approver-view"')[1].split("</div>")[0]
    assert 'href="#rehearsal"' in view and "none yet" in view and "required" in view
    assert 'id="rehearsal"' in page  # the link lands on the rehearsal panel


def test_the_approver_checklist_leaves_the_rehearsal_out_when_none_is_required_or_done(
    client, world, approver, settings
):
    settings.OPS_REQUIRE_REHEARSAL = False
    client.force_login(approver)

    page = client.get(url("change", world.request.pk)).content.decode()

    assert 'href="#rehearsal"' not in page.split('id="approver-view"')[1].split("</div>")[0]


def test_the_request_page_explains_the_plan_hash_and_repeats_no_raw_json(client, world, operator):
    client.force_login(operator)

    page = client.get(url("change", world.request.pk)).content.decode()

    assert 'id="plan-hash"' in page and "the approver's email quotes it" in page
    for raw in ("Sql sha256", "Requested by username", "Code recipients", '["h8"', "From heads"):
        assert raw not in page, raw


def test_the_result_of_an_execution_is_at_the_top_of_the_request_page(client, world, operator):
    client.force_login(operator)
    client.post(url("execute", world.request.pk), {"code": codes_in_outbox()[-1], "confirmed": "yes"})
    assert run_queued_jobs() == 1  # a worker runs the queued downgrade

    page = client.get(url("change", world.request.pk)).content.decode()

    assert page.index('id="result"') < page.index('id="gate-checklist"') < page.index('id="plan"')
    result = page.split('id="result"')[1].split("</div>")[0]
    assert "succeeded" in result and "olga" in result


def test_the_request_form_marks_its_required_fields(client, world, operator):
    client.force_login(operator)

    page = client.get(url("add")).content.decode()

    labels = {m[1]: m[0] for m in re.findall(r'<label([^>]*)for="id_(\w+)"[^>]*>', page)}
    labels.update({m[0]: m[1] for m in re.findall(r'<label for="id_(\w+)"([^>]*)>', page)})
    for field in ("target", "to", "reason"):
        assert 'class="required"' in labels[field], field
    assert "required" not in labels["snapshot"]
    assert "are required" in page
