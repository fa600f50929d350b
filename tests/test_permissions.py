"""The permission matrix: each persona against each admin page and action, checked on the server.

Allowed means the page renders or the action runs (any status below 400 that is
not a redirect to the login page, or 200 with a refusal from a gate); denied
means 403 for staff and a redirect to the login page for a non-staff user.
A URL name that does not exist fails the test (no skip): every page listed
here is part of the console.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from django.urls import NoReverseMatch, reverse

from opsapp.models import AuditEvent, RollbackRequest
from tests.admin_fixtures import build_world

pytestmark = pytest.mark.django_db

STAFF = ("admin", "operator", "approver", "auditor", "outsider")
VIEWERS = {"admin", "operator", "approver", "auditor"}
OPERATE = {"admin", "operator"}
EXPORT = {"admin", "auditor"}
NOBODY: set[str] = set()


@dataclass(frozen=True)
class Case:
    label: str
    method: str
    url_name: str
    args: str = ""  # which object id: "target", "revision", "snapshot", "request", "event"; "=x" is literal x
    allowed: set[str] = field(default_factory=set)
    data: tuple = ()
    query: str = ""


# Order matters only for the actions with lasting effects: cancel comes last.
MATRIX: list[Case] = [
    Case("admin index", "GET", "admin:index", allowed=set(STAFF)),
    Case("target list", "GET", "admin:opsapp_target_changelist", allowed=VIEWERS),
    Case("target page", "GET", "admin:opsapp_target_change", "target", VIEWERS),
    Case("target graph", "GET", "admin:opsapp_target_graph", "target", VIEWERS),
    # Sync re-reads what the pages already read (script directory, alembic_version); it changes no target.
    Case("target sync POST", "POST", "admin:opsapp_target_sync", "target", OPERATE),
    Case("target sync all POST", "POST", "admin:opsapp_target_sync_all", allowed=OPERATE),
    Case("target change POST", "POST", "admin:opsapp_target_change", "target", NOBODY, (("name", "x"),)),
    Case("target delete", "GET", "admin:opsapp_target_delete", "target", NOBODY),
    Case("revision list", "GET", "admin:opsapp_revision_changelist", allowed=VIEWERS),
    Case("revision page", "GET", "admin:opsapp_revision_change", "revision", VIEWERS),
    Case("revision delete", "GET", "admin:opsapp_revision_delete", "revision", NOBODY),
    Case("snapshot list", "GET", "admin:opsapp_snapshot_changelist", allowed=VIEWERS),
    Case("snapshot page", "GET", "admin:opsapp_snapshot_change", "snapshot", VIEWERS),
    Case("snapshot add", "GET", "admin:opsapp_snapshot_add", allowed=NOBODY),
    Case("snapshot delete", "GET", "admin:opsapp_snapshot_delete", "snapshot", NOBODY),
    Case("snapshot take POST", "POST", "admin:opsapp_snapshot_take", allowed=OPERATE, data=(("target", "{target}"),)),
    Case("rollback list", "GET", "admin:opsapp_rollbackrequest_changelist", allowed=VIEWERS),
    Case("rollback page", "GET", "admin:opsapp_rollbackrequest_change", "request", VIEWERS),
    Case("rollback change POST", "POST", "admin:opsapp_rollbackrequest_change", "request", NOBODY, (("reason", "x"),)),
    Case("rollback delete", "GET", "admin:opsapp_rollbackrequest_delete", "request", NOBODY),
    Case("request form", "GET", "admin:opsapp_rollbackrequest_add", allowed=OPERATE),
    # Missing reason: allowed personas get the form back (200), the others 403; nothing is created.
    Case(
        "request POST",
        "POST",
        "admin:opsapp_rollbackrequest_add",
        allowed=OPERATE,
        data=(("target", "{name}"), ("to", "g7")),
    ),
    Case(
        "attach POST", "POST", "admin:opsapp_rollbackrequest_attach", "request", OPERATE, (("snapshot", "{snapshot}"),)
    ),
    Case("take snapshot now POST", "POST", "admin:opsapp_rollbackrequest_takesnapshot", "request", OPERATE),
    Case("reissue POST", "POST", "admin:opsapp_rollbackrequest_reissue", "request", OPERATE),
    Case("execute page", "GET", "admin:opsapp_rollbackrequest_execute", "request", OPERATE),
    Case(
        "execute POST (wrong code)",
        "POST",
        "admin:opsapp_rollbackrequest_execute",
        "request",
        OPERATE,
        (("code", "1"),),
    ),
    Case("audit list", "GET", "admin:opsapp_auditevent_changelist", allowed=VIEWERS),
    Case("audit page", "GET", "admin:opsapp_auditevent_change", "event", VIEWERS),
    Case("audit change POST", "POST", "admin:opsapp_auditevent_change", "event", NOBODY, (("message", "x"),)),
    Case("audit delete", "GET", "admin:opsapp_auditevent_delete", "event", NOBODY),
    Case("audit add", "GET", "admin:opsapp_auditevent_add", allowed=NOBODY),
    # Exports are POSTs: each is audited, and a GET writes nothing.
    Case("audit export CSV", "POST", "admin:opsapp_auditevent_export", "=csv", EXPORT),
    Case("audit export JSONL", "POST", "admin:opsapp_auditevent_export", "=jsonl", EXPORT),
    Case("reconcile POST", "POST", "admin:opsapp_rollbackrequest_reconcile", allowed=OPERATE),
    Case("cancel POST", "POST", "admin:opsapp_rollbackrequest_cancel", "request", OPERATE),
]


@pytest.fixture
def world(pg_url, branchy_scripts, configure_target, django_user_model, approver):
    requester = django_user_model.objects.create_user("rita", password="pw-rita", is_staff=True)
    from django.contrib.auth.models import Group

    requester.groups.add(Group.objects.get(name="operators"))
    return build_world(pg_url=pg_url, scripts=branchy_scripts, configure_target=configure_target, requester=requester)


def object_ids(world) -> dict[str, str]:
    return {
        "target": str(world.target.pk),
        "revision": str(world.target.catalog.revisions.get(revision="h8").pk),
        "snapshot": str(world.snapshot.pk),
        "request": str(world.request.pk),
        "event": str(AuditEvent.objects.order_by("seq").first().pk),
        "name": world.name,
    }


def resolve(case: Case, ids: dict[str, str]) -> str:
    arg = case.args[1:] if case.args.startswith("=") else ids.get(case.args)
    path = reverse(case.url_name, args=[arg] if case.args else [])
    return f"{path}?{case.query}" if case.query else path


def outcome(response) -> str:
    if response.status_code == 403:
        return "denied"
    if response.status_code == 302 and reverse("admin:login") in response["Location"]:
        return "login"
    if response.status_code >= 400:
        return f"error {response.status_code}"
    return "allowed"


def walk(client, world, persona: str | None) -> list[str]:
    """Run every case; return the mismatches as readable lines."""
    ids = object_ids(world)
    problems = []
    for case in MATRIX:
        try:
            target = resolve(case, ids)
        except NoReverseMatch as exc:
            problems.append(f"{case.label}: the admin URL {case.url_name} is missing ({exc})")
            continue
        data = {key: value.format(**ids) for key, value in case.data}
        response = client.get(target) if case.method == "GET" else client.post(target, data)
        got = outcome(response)
        if persona is None:
            expected = "login"
        else:
            expected = "allowed" if persona in case.allowed else "denied"
        if got != expected:
            problems.append(
                f"{persona or 'anonymous'}: {case.label} ({case.method} {target}) -> {got}, expected {expected}"
            )
    return problems


@pytest.mark.parametrize("persona", STAFF)
def test_each_persona_gets_exactly_the_pages_and_actions_of_its_role(client, world, persona, request):
    user = request.getfixturevalue({"admin": "admin_user"}.get(persona, persona))
    client.force_login(user)
    problems = walk(client, world, persona)
    assert problems == [], "\n".join(problems)
    if persona not in OPERATE:
        world.request.refresh_from_db()
        assert world.request.status == "pending" and world.request.code_attempts == 0
        assert RollbackRequest.objects.count() == 1


def test_a_user_who_is_not_staff_is_sent_to_the_login_page_everywhere(client, world, django_user_model):
    user = django_user_model.objects.create_user("nobody", password="pw-nobody", is_staff=False)
    client.force_login(user)
    problems = walk(client, world, None)
    assert problems == [], "\n".join(problems)


def test_an_anonymous_visitor_is_sent_to_the_login_page_everywhere(client, world):
    problems = walk(client, world, None)
    assert problems == [], "\n".join(problems)


def test_every_role_group_holds_exactly_its_documented_permissions():
    from django.contrib.auth.models import Group

    from opsapp.roles import ROLES

    for name, perms in ROLES.items():
        held = {f"{p.content_type.app_label}.{p.codename}" for p in Group.objects.get(name=name).permissions.all()}
        assert held == set(perms), name
    assert "opsapp.change_auditevent" not in {p for perms in ROLES.values() for p in perms}
