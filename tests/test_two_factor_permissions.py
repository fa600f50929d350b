"""The permission matrix with two-factor sign-in on.

With verified sessions every persona gets exactly what the matrix of
tests/test_permissions.py grants; a staff user who has passed only the
password reaches no page and no action: everything redirects to the 2FA pages
and nothing changes.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from opsapp.models import AuditEvent, RollbackRequest
from tests import test_permissions
from tests.test_permissions import MATRIX, STAFF, object_ids, resolve, walk
from tests.two_factor_support import make_device, verified_login

pytestmark = pytest.mark.django_db

world = test_permissions.world  # the same fixture: one target, a pending request, a snapshot


@pytest.fixture(autouse=True)
def _require_2fa(settings):
    settings.OPS_REQUIRE_2FA = True


@pytest.mark.parametrize("persona", STAFF)
def test_with_a_verified_session_each_persona_keeps_exactly_its_roles_pages(client, world, persona, request):
    user = request.getfixturevalue({"admin": "admin_user"}.get(persona, persona))
    verified_login(client, user)
    problems = walk(client, world, persona)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("persona", ["admin", "operator", "approver", "auditor"])
@pytest.mark.parametrize("has_device", [False, True], ids=["no device", "device, no token"])
def test_after_only_the_password_nobody_reaches_any_page_or_action(client, world, persona, has_device, request):
    user = request.getfixturevalue({"admin": "admin_user"}.get(persona, persona))
    if has_device:
        make_device(user)
    client.force_login(user)  # the password step: authenticated, not verified
    page = reverse("opsapp_2fa_verify" if has_device else "opsapp_2fa_enroll")
    events_before = AuditEvent.objects.count()
    ids = object_ids(world)
    for case in MATRIX:
        url = resolve(case, ids)
        data = {key: value.format(**ids) for key, value in case.data}
        response = client.get(url) if case.method == "GET" else client.post(url, data)
        assert response.status_code == 302, f"{case.label}: {response.status_code}"
        assert response["Location"].startswith(page + "?next="), f"{case.label}: {response['Location']}"
    world.request.refresh_from_db()
    assert world.request.status == "pending" and world.request.code_attempts == 0
    assert RollbackRequest.objects.count() == 1
    assert AuditEvent.objects.count() == events_before
