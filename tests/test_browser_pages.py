"""Every main page, for each persona, at 1280 x 800 and 1920 x 1080, in the real Chromium (issue 15).

For each role (operator, approver, auditor) the test opens the pages that role lives in, saves a
full-page screenshot of each at both sizes (screenshots/pages-<role>-<page>-<width>.png, for a person
to look at), and checks at 1280 px that no changelist table is wider than its container and that every
column header is inside it. axe-core (axe-playwright-python) scans each page: no serious or critical
violation is allowed.
"""

from __future__ import annotations

import pytest
from browser_support import codes_mailed_to, log_in, new_page, screenshot, submit_login
from django.core import mail
from django.urls import reverse
from test_browser import MERGE, _role_groups, browser, executed_rollback, shop  # noqa: F401 (fixtures)

from opsapp.models import AuditEvent, Revision
from tests.two_factor_support import make_device

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = [(1280, 800), (1920, 1080)]
BLOCKING_IMPACTS = ("serious", "critical")


@pytest.fixture
def pages(shop, executed_rollback, operator, approver) -> dict[str, str]:  # noqa: F811
    """The main pages by name, with an executed request and a pending one (its code mailed to the approver)."""
    from opsapp.services.actors import Actor
    from opsapp.services.rollback import requests as rollback

    pending = rollback.create_request(
        target_name="shop",
        to="base",
        reason="Tear the demo down for the training run.",
        actor=Actor.from_user(operator),
    )
    assert codes_mailed_to(mail.outbox, approver.email)
    event = AuditEvent.objects.filter(action="rollback_succeeded").get()
    revision = Revision.objects.get(catalog_id=shop.catalog_id, revision=MERGE)
    return {
        "dashboard": reverse("admin:index"),
        "targets": reverse("admin:opsapp_target_changelist"),
        "target": reverse("admin:opsapp_target_change", args=[shop.pk]),
        "graph": reverse("admin:opsapp_target_graph", args=[shop.pk]),
        "revisions": reverse("admin:opsapp_revision_changelist"),
        "revision": reverse("admin:opsapp_revision_change", args=[revision.pk]),
        "snapshots": reverse("admin:opsapp_snapshot_changelist"),
        "requests": reverse("admin:opsapp_rollbackrequest_changelist"),
        "request-executed": reverse("admin:opsapp_rollbackrequest_change", args=[executed_rollback.pk]),
        "request-pending": reverse("admin:opsapp_rollbackrequest_change", args=[pending.pk]),
        "execute": reverse("admin:opsapp_rollbackrequest_execute", args=[pending.pk]),
        "request-form": reverse("admin:opsapp_rollbackrequest_add"),
        "audit-log": reverse("admin:opsapp_auditevent_changelist"),
        "audit-event": reverse("admin:opsapp_auditevent_change", args=[event.pk]),
    }


ROLE_PAGES = {
    "operator": ("olga", None),  # every page
    "approver": ("anton", ("execute", "request-form")),  # all but the operator's own forms
    "auditor": ("aude", ("execute", "request-form")),
}


def table_overflow(page) -> list[str]:
    """What of the changelist table sticks out of its container, as sentences (empty: it fits)."""
    return page.evaluate(
        """() => {
        const table = document.querySelector('#result_list');
        if (!table) return [];
        const box = (table.closest('.results') || table.parentElement).getBoundingClientRect();
        const problems = [];
        const t = table.getBoundingClientRect();
        if (t.width > box.width + 1) problems.push(`table is ${t.width}px wide in a ${box.width}px container`);
        for (const th of table.querySelectorAll('thead th')) {
            const r = th.getBoundingClientRect();
            const name = th.innerText.trim() || th.className;
            if (r.right > box.right + 1 || r.right > window.innerWidth) problems.push(`header ${name} is cut off`);
            if (r.width < 1) problems.push(`header ${name} is not visible`);
        }
        return problems;
    }"""
    )


@pytest.mark.parametrize("role", list(ROLE_PAGES))
def test_every_main_page_fits_1280_px_is_accessible_and_is_screenshotted_at_both_sizes(
    live_server,
    browser,  # noqa: F811
    pages,
    role,
    auditor,
    django_user_model,
):
    from axe_playwright_python.sync_playwright import Axe

    username, skipped = ROLE_PAGES[role]
    visible = {name: path for name, path in pages.items() if not skipped or name not in skipped}
    axe = Axe()
    # 2FA is on in the browser tests (as in production): each persona signs in with a real TOTP token.
    device = make_device(django_user_model.objects.get(username=username))
    problems: dict[str, list[str]] = {}
    for width, height in SIZES:
        page = new_page(browser, live_server.url)
        page.set_viewport_size({"width": width, "height": height})
        log_in(page, username, "pw-" + username)
        submit_login(page, device)
        for name, path in visible.items():
            response = page.goto(path)
            assert response.status == 200, f"{role} {name}: HTTP {response.status}"
            assert page.locator("#user-tools").count() == 1, f"{role} {name}: no user tools"
            screenshot(page, f"pages-{role}-{name}-{width}")
            if width == 1280:
                problems.update({f"{name} layout": table_overflow(page)} if table_overflow(page) else {})
                problems.update({f"{name} width": page_overflow(page)} if page_overflow(page) else {})
                violations = [
                    f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                    for v in axe.run(page).response["violations"]
                    if v["impact"] in BLOCKING_IMPACTS
                ]
                if violations:
                    problems[f"{name} axe"] = violations
        page.context.close()
    assert problems == {}, problems


def page_overflow(page) -> list[str]:
    """What sticks out of the window or of its dashboard section at the current width, as sentences."""
    return page.evaluate(
        """() => {
        const problems = [];
        const wide = document.documentElement.scrollWidth;
        if (wide > window.innerWidth + 1) problems.push(`the page is ${wide}px wide in a ${window.innerWidth}px window`);
        for (const module of document.querySelectorAll('#ops-dashboard .module')) {
            const table = module.querySelector('table');
            if (!table) continue;
            const t = table.getBoundingClientRect().width, m = module.getBoundingClientRect().width;
            if (t > m + 1) problems.push(`#${module.id}: table is ${t}px wide in a ${m}px section`);
        }
        return problems;
    }"""
    )


def test_the_dashboard_fits_1280_px_with_long_audit_messages_and_cron_problems(
    live_server,
    browser,  # noqa: F811
    executed_rollback,  # noqa: F811
    operator,
):
    """The dashboard sections (cron, fleet, requests, operations, audit) wrap inside the window at 1280 px.

    The admin index's own CSS fixes #content at 600 px and keeps table cells on one line: the audit
    messages (up to 100 characters) and the cron explanations ran off the right edge of the window.
    """
    from opsapp.models import AuditEvent

    assert AuditEvent.objects.filter(message__regex=r"^.{90,}").exists(), "the fixture has long audit messages"
    device = make_device(operator)
    page = new_page(browser, live_server.url)
    page.set_viewport_size({"width": 1280, "height": 800})
    log_in(page, "olga", "pw-olga")
    submit_login(page, device)
    assert page.locator("#dashboard-audit tbody tr").count() > 1
    screenshot(page, "dashboard-1280")
    assert page_overflow(page) == []
    page.context.close()
