"""The admin's frame around every page (issue 15): the 403 page, the favicon, one log line per 404,
no dead "View site" or History buttons, one date form with the time zone."""

from __future__ import annotations

import logging

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from opsapp.log_filters import not_a_404
from opsapp.models import AuditAction, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event

pytestmark = pytest.mark.django_db


def test_the_403_page_has_the_user_tools_and_names_the_users_own_role(client, auditor):
    client.force_login(auditor)

    response = client.get(reverse("admin:opsapp_rollbackrequest_add"))

    assert response.status_code == 403
    page = response.content.decode()
    assert 'id="user-tools"' in page and "Log out" in page
    roles = page.split('id="your-roles"')[1].split("</p>")[0]
    assert "<strong>auditors</strong>" in roles
    others = page.split('id="other-roles"')[1].split("</ul>")[0]
    assert "operators" in others and "auditors" not in others


def test_the_favicon_is_shipped_and_favicon_ico_leads_to_it(client, operator):
    assert finders.find("opsapp/favicon.svg")
    client.force_login(operator)

    response = client.get("/favicon.ico")

    assert response.status_code == 302 and response["Location"].endswith("opsapp/favicon.svg")
    assert 'rel="icon"' in client.get(reverse("admin:index")).content.decode()


def stream_handlers_reached_by(name: str) -> list[logging.Handler]:
    """The stream handlers a record of logger `name` passes through (pytest's own capture left out)."""
    found, logger = [], logging.getLogger(name)
    while logger:
        found += [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not type(h).__module__.startswith("_pytest")
        ]
        logger = logger.parent if logger.propagate else None
    return found


def test_a_404_is_logged_once():
    # Django's default config gave `django` a console handler of its own besides the root's (with DEBUG=1).
    assert len(stream_handlers_reached_by("django.request")) == 1
    assert len(stream_handlers_reached_by("django.server")) == 1


def test_runservers_access_line_is_dropped_for_a_404_only():
    def record(status: int) -> logging.LogRecord:
        rec = logging.LogRecord("django.server", logging.WARNING, __file__, 1, "GET", None, None)
        rec.status_code = status
        return rec

    assert not not_a_404(record(404))
    assert not_a_404(record(200)) and not_a_404(record(500))


def test_no_view_site_link_and_no_history_button_on_read_only_objects(client, auditor):
    event = append_event(
        action=AuditAction.ROLLBACK_SUCCEEDED, outcome=AuditOutcome.SUCCESS, actor=Actor.cron(), message="x"
    )
    client.force_login(auditor)

    page = client.get(reverse("admin:opsapp_auditevent_change", args=[event.pk])).content.decode()

    assert "View site" not in page
    assert 'class="historylink"' not in page


def test_the_audit_event_page_has_a_human_title_and_a_json_block_without_stray_indentation(client, auditor):
    event = append_event(
        action=AuditAction.ROLLBACK_SUCCEEDED,
        outcome=AuditOutcome.SUCCESS,
        actor=Actor.cron(),
        message="done",
        detail={"heads": ["abc"], "ms": 12},
    )
    client.force_login(auditor)

    page = client.get(reverse("admin:opsapp_auditevent_change", args=[event.pk])).content.decode()

    assert f"Event #{event.seq}: rollback succeeded (success)" in page
    assert "rollback_succeeded success" not in page
    block = page.split('<pre class="ops-json">')[1].split("</pre>")[0]
    assert block.startswith("{\n") and "\n  &quot;heads&quot;: [\n    &quot;abc&quot;\n  ]" in block


def test_dates_have_one_form_with_the_time_zone(client, auditor):
    event = append_event(action=AuditAction.STAMP, outcome=AuditOutcome.INFO, actor=Actor.cron(), message="x")
    client.force_login(auditor)

    listing = client.get(reverse("admin:opsapp_auditevent_changelist")).content.decode()
    dashboard = client.get(reverse("admin:index")).content.decode()

    from django.utils import timezone

    stamp = timezone.localtime(event.created_at).strftime("%Y-%m-%d %H:%M:%S")
    assert f"{stamp} UTC" in listing and f"{stamp} UTC" in dashboard
    assert "a.m." not in listing and "p.m." not in listing


def test_the_index_sidebar_shows_the_users_own_audited_actions_and_finished_operations(client, operator, auditor):
    """Django's "Recent actions" (LogEntry) was always empty here: the sidebar reads the audit log instead."""
    from django.utils import timezone

    from opsapp.models import Operation, Target

    mine = append_event(
        action=AuditAction.SNAPSHOT_ATTACHED,
        outcome=AuditOutcome.SUCCESS,
        actor=Actor.from_user(operator),
        target="shop",
        message="mine",
    )
    append_event(action=AuditAction.STAMP, outcome=AuditOutcome.INFO, actor=Actor.from_user(auditor), message="x")
    target = Target.objects.create(name="shop")
    done = Operation.objects.create(
        kind="snapshot", target=target, state="succeeded", requested_by_username="olga", finished_at=timezone.now()
    )
    Operation.objects.create(kind="snapshot", target=target, state="queued", requested_by_username="olga")
    client.force_login(operator)

    page = client.get(reverse("admin:index")).content.decode()

    sidebar = page.split('id="content-related"')[1]
    assert "None available" not in page and "My actions" not in page
    assert "Your recent actions" in sidebar
    actions = sidebar.split('class="actionlist ops-recent"')[1].split("</ul>")[0]
    assert mine.get_action_display().capitalize() in actions and "shop" in actions
    assert actions.count("<li>") == 1  # the auditor's event is not the operator's
    assert reverse("admin:opsapp_auditevent_change", args=[mine.pk]) in actions
    finished = sidebar.split('class="actionlist ops-finished"')[1].split("</ul>")[0]
    assert reverse("admin:opsapp_operation_change", args=[done.pk]) in finished
    assert finished.count("<li>") == 1  # the queued one is on the dashboard's own panel, not here

    assert reverse("admin:opsapp_auditevent_changelist") in sidebar
