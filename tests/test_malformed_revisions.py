"""Malformed revision expressions get a clear, audited refusal from the planner, the command and the admin.

Alembic answers `@`, `@@` and `payments@` with a bare AssertionError and reads
`@abc` as "every branch"; the console refuses them, naming what is wrong,
audits the attempt, and changes nothing on the target (a real PostgreSQL
target with the rbt history r1 -> r2 -> r3 and data).
"""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.urls import reverse

from opsapp.models import AuditAction, AuditEvent, AuditOutcome, RollbackRequest
from opsapp.services.catalog.planner import plan_downgrade
from opsapp.services.errors import RevisionResolutionError
from tests.conftest import create_pg_database, drop_pg_database
from tests.rollback_fixtures import build_rollback_env

pytestmark = pytest.mark.django_db

MALFORMED = {
    "@": "no branch name before '@'",
    "@@": "more than one '@'",
    "payments@": "nothing after '@'",
    "@abc": "no branch name before '@'",
    "@head": "no branch name before '@'",
    "@-1": "no branch name before '@'",
    "a@b@c": "more than one '@'",
    "r1 r2": "a space or a control character",
    "r\x001": "a space or a control character",
    "r1\u202e": "a space or a control character",
    "r1\t": None,  # stripped like any surrounding space: a valid r1
    "x" * 300: "longer than 255 characters",
}


@pytest.fixture
def target_env(script_dir_factory, configure_target, snapshot_dir, operator, approver):
    url = create_pg_database("ops_inputs")
    try:
        yield build_rollback_env("rbt", url, script_dir_factory(url), configure_target)
    finally:
        drop_pg_database(url)


def refused_events() -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(action=AuditAction.ROLLBACK_REQUESTED, outcome=AuditOutcome.REFUSED).order_by("seq")
    )


@pytest.mark.parametrize("expression,why", [(k, v) for k, v in MALFORMED.items() if v])
def test_the_planner_names_what_is_malformed(expression, why):
    with pytest.raises(RevisionResolutionError) as info:
        plan_downgrade("rbt", expression, ["r3"])
    assert str(info.value).startswith("Malformed revision ")
    assert why in str(info.value)
    assert "Write a revision id, a unique prefix, branch@rev, base or -N." in str(info.value)
    assert "\x00" not in str(info.value) and len(str(info.value)) < 300


def test_the_command_refuses_each_malformed_expression_audited_and_nothing_changed(target_env, capsys):
    before = target_env.state()
    malformed = [k for k, v in MALFORMED.items() if v]
    for expression in malformed:
        with pytest.raises(CommandError) as info:
            call_command("request_rollback", "--target", "rbt", "--to", expression, "--reason", "x", "--actor", "olga")
        assert str(info.value).startswith("Malformed revision "), expression
        assert info.value.returncode == 1
    assert "Traceback" not in capsys.readouterr().err
    events = refused_events()
    assert len(events) == len(malformed)
    assert all(e.actor == "olga" and "Malformed revision" in e.message for e in events)
    assert "\x00" not in "".join(e.message + e.to_revision for e in events)
    assert not RollbackRequest.objects.exists() and mail.outbox == []
    assert target_env.state() == before


def test_the_admin_form_refuses_each_malformed_expression_on_the_page_audited(target_env, client, operator):
    before = target_env.state()
    client.raise_request_exception = True
    client.force_login(operator)
    url = reverse("admin:opsapp_rollbackrequest_add")
    for expression in ("@", "@@", "payments@", "@abc", "a@b@c", "r1 r2"):
        response = client.post(url, {"target": "rbt", "to": expression, "reason": "checkout broken"})
        assert response.status_code == 200, expression
        page = response.content.decode()
        assert 'id="request-refusal"' in page and "Malformed revision" in page, expression
    assert len(refused_events()) == 6
    # A NUL byte never gets past the form (Django refuses it) and still answers 200 with the field error.
    response = client.post(url, {"target": "rbt", "to": "r\x001", "reason": "x"})
    assert response.status_code == 200 and "Null characters are not allowed." in response.content.decode()
    assert not RollbackRequest.objects.exists()
    assert target_env.state() == before


def test_a_trailing_tab_is_stripped_and_the_revision_still_plans(target_env):
    assert plan_downgrade("rbt", "r1\t", ["r3"]).to_revision == "r1"
