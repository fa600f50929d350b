"""A NUL byte in a POSTed form field answers with a form error or a 400, never a 500 (review of issue 11 item 5)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from opsapp.models import AuditEvent, Target

pytestmark = pytest.mark.django_db


def test_a_nul_byte_in_the_login_form_is_a_form_error(client):
    client.raise_request_exception = True
    response = client.post(reverse("admin:login"), {"username": "ad\x00min", "password": "x\x00"})
    assert response.status_code == 200
    assert "Null characters are not allowed." in response.content.decode()


@pytest.mark.parametrize("field", ["_selected_action", "action", "index"])
def test_a_nul_byte_in_a_changelist_action_post_is_not_a_500(client, admin_user, field):
    client.raise_request_exception = True
    client.force_login(admin_user)
    Target.objects.create(name="rbt")
    data = {"action": "delete_selected", "_selected_action": ["1"], "index": "0"}
    data[field] = "1\x00" if field != "action" else "delete\x00selected"
    response = client.post(reverse("admin:opsapp_target_changelist"), data)
    assert response.status_code in (200, 302, 400, 403)


@pytest.mark.parametrize("selected", ["1\x00", "abc", "\u00b2", ""])
def test_a_snapshot_action_on_something_not_an_id_answers_400_and_verifies_nothing(client, admin_user, selected):
    client.raise_request_exception = True
    client.force_login(admin_user)
    data = {"action": "verify_selected", "_selected_action": ["1", selected], "index": "0"}
    response = client.post(reverse("admin:opsapp_snapshot_changelist"), data)
    assert response.status_code == 400
    assert "the selected snapshots must be snapshot ids" in response.content.decode()
    assert not AuditEvent.objects.exists()


def test_a_nul_byte_in_the_rollback_request_form_is_a_form_error(client, admin_user):
    client.raise_request_exception = True
    client.force_login(admin_user)
    data = {"target": "rbt\x00", "to_revision_input": "r1\x00", "to": "r1\x00", "reason": "x\x00y"}
    response = client.post(reverse("admin:opsapp_rollbackrequest_add"), data)
    assert response.status_code in (200, 400)
