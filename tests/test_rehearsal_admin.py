"""The "Rehearse" action and the rehearsal panel of the request page (real target, real pg_restore)."""

from __future__ import annotations

import pytest

pytest_plugins = ["rollback_fixtures"]

from conftest import pg_query  # noqa: E402
from django.urls import reverse  # noqa: E402
from rollback_fixtures import operator_actor, take_verified_snapshot  # noqa: E402

from opsapp.models import Rehearsal  # noqa: E402
from opsapp.services.rollback.requests import attach_snapshot  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def url(name: str, *args) -> str:
    return reverse(f"admin:opsapp_rollbackrequest_{name}", args=args)


def test_an_operator_rehearses_from_the_request_page_and_sees_the_measured_losses(
    client, ready_request, operator, settings
):
    settings.OPS_REQUIRE_REHEARSAL = True
    r = ready_request
    before = r.env.state()
    client.force_login(operator)
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearse-form"' in page and "Not rehearsed yet" in page
    assert "no rehearsal of its plan" in page  # gate "rehearsal" in the gate table

    response = client.post(url("rehearse", r.request.pk), {"round_trip": "1"}, follow=True)

    page = response.content.decode()
    assert response.status_code == 200
    assert f"rehearsed on a copy of snapshot #{r.snapshot.pk}: OK in" in page
    assert "destroys 2 rows of notes and 3 values of customers.email" in page
    assert 'id="round-trip"' in page and "do not come back" in page
    assert 'id="rehearsal-differences"' not in page  # the analysis and the rehearsal agree here
    assert r.env.state() == before


def test_the_operator_is_told_that_the_rehearsal_replaced_the_code(client, ready_request, operator, settings):
    """A rehearsal re-sends the approvers' email with its result and a NEW code: the old one stops working.

    The page said only "Rehearsal #N: ..."; an operator holding the old code then typed it and spent a
    wrong attempt without knowing why.
    """
    from django.core import mail

    settings.OPS_REQUIRE_REHEARSAL = True
    r = ready_request
    old_hash = r.request.code_hash
    assert old_hash
    client.force_login(operator)
    mail.outbox.clear()

    response = client.post(url("rehearse", r.request.pk), follow=True)

    r.request.refresh_from_db()
    assert r.request.code_hash and r.request.code_hash != old_hash and mail.outbox
    shown = " ".join(str(m) for m in response.context["messages"])
    assert "new verification code" in shown and "the old code no longer works" in shown
    assert ", ".join(r.request.code_recipients) in shown


def test_the_page_flags_where_the_rehearsal_and_the_static_analysis_disagree(client, ready_request, operator):
    r = ready_request
    # A note added after the request was analysed: the snapshot now holds 3, the analysis said 2.
    pg_query(r.env.url, "INSERT INTO notes (id, body) VALUES (3, 'third')")
    snap = take_verified_snapshot(r.env, operator)
    attach_snapshot(r.request, snap.pk, actor=operator_actor(operator))
    client.force_login(operator)
    client.post(url("rehearse", r.request.pk))
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearsal-differences"' in page
    assert "notes: the analysis counted 2 rows, the rehearsal destroyed 3" in page


def test_rehearse_is_post_only_and_needs_the_change_permission(client, ready_request, auditor):
    r = ready_request
    client.force_login(auditor)
    assert client.post(url("rehearse", r.request.pk)).status_code == 403
    assert client.get(url("rehearse", r.request.pk)).status_code == 403
    assert not Rehearsal.objects.exists()


def test_get_on_rehearse_changes_nothing(client, ready_request, operator):
    client.force_login(operator)
    assert client.get(url("rehearse", ready_request.request.pk)).status_code == 405
    assert not Rehearsal.objects.exists()


# ------------------------------------------------------------------ settings checks
def test_a_rehearsal_url_that_is_not_postgresql_fails_check_e070(settings):
    from opsapp.checks import check_rehearsal_settings

    settings.OPS_REHEARSAL_URL = "mysql://ops:secret@db/ops"
    errors = check_rehearsal_settings()
    assert [e.id for e in errors] == ["opsapp.E070"]
    assert "secret" not in errors[0].msg


def test_zero_restore_jobs_fail_check_e071(settings):
    from opsapp.checks import check_rehearsal_settings

    settings.OPS_REHEARSAL_RESTORE_JOBS = 0
    assert [e.id for e in check_rehearsal_settings()] == ["opsapp.E071"]
