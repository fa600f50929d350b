"""Rehearsal in a real browser (issue 14): an operator rehearses, the approver's email carries the result,
and the operator executes with the code from that email.

The demo target `shop` (its real history, seeded) on a throwaway PostgreSQL database, with gate
"rehearsal" required. Screenshots of the request page go to screenshots/rehearsal-*.png.
"""

from __future__ import annotations

import re

import pytest
from browser_support import (
    chromium_browser,
    codes_mailed_to,
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

from opsapp.models import Rehearsal, RollbackStatus

pytest_plugins = ["rollback_fixtures"]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HEAD = "c8a1d5f3b7ad"
MERGE = "9c4f1e7b5d7a"


@pytest.fixture
def shop_request(roles_present, pg_url, configure_target, operator, approver, settings):
    from opsapp.demo.seed import seed_demo
    from opsapp.services.actors import Actor
    from opsapp.services.catalog.sync import sync_target
    from opsapp.services.rollback.requests import create_request
    from opsapp.services.snapshots.lifecycle import take_snapshot

    configure_target("shop", pg_url, REPO_ROOT / "alembic.ini")
    seed_demo("shop")
    sync_target("shop")
    actor = Actor.from_user(operator)
    snap = take_snapshot("shop", actor=actor)
    assert snap.status == "verified", snap.error
    request = create_request(target_name="shop", to=MERGE, reason="refunds broken", actor=actor, snapshot_id=snap.pk)
    settings.OPS_REQUIRE_REHEARSAL = True
    return request, snap


def test_an_operator_rehearses_then_executes_with_the_code_from_the_email_carrying_the_result(
    live_server, shop_request, pg_url, operator, approver, settings
):
    request, snap = shop_request
    refunds = pg_query(pg_url, "SELECT count(*) FROM refunds")[0][0]
    emails = pg_query(pg_url, "SELECT count(email) FROM accounts")[0][0]
    with chromium_browser() as browser:
        page = new_page(browser, live_server.url)
        log_in(page, "olga", "pw-olga")
        submit_login(page)
        page.goto(reverse("admin:opsapp_rollbackrequest_change", args=[request.pk]))
        gate = page.locator("#gate-checklist tbody tr").filter(has_text="rehearsal")
        assert "no rehearsal" in gate.inner_text(), gate.inner_text()
        assert "Not rehearsed yet" in page.locator("#rehearsal").inner_text()

        navigate(page, page.get_by_role("button", name="Rehearse"))

        text = messages_text(page)
        assert f"rehearsed on a copy of snapshot #{snap.pk}: OK in" in text, text
        assert f"destroys {refunds:,} rows of refunds" in text and f"{emails:,} values of accounts.email" in text
        result = page.locator("#rehearsal-result").inner_text()
        assert "OK in" in result
        for width, height in ((1280, 800), (1920, 1080)):
            page.set_viewport_size({"width": width, "height": height})
            screenshot(page, f"rehearsal-request-{width}x{height}")
        assert heads(pg_url) == [HEAD]  # the rehearsal ran on a copy

        # The approver's newest email carries the rehearsal's result and a fresh code.
        body = mail.outbox[-1].body
        assert approver.email in mail.outbox[-1].to
        assert re.search(rf"rehearsed on a copy of snapshot #{snap.pk}: OK in [\d.]+ s; destroys ", body), body
        code = codes_mailed_to(mail.outbox, approver.email)[-1]

        # Executing is two steps: the confirmation page, then the code.
        navigate(page, page.get_by_role("link", name="Execute the downgrade…"))
        page.get_by_role("textbox", name="Verification code").fill(code)
        navigate(page, page.get_by_role("button", name="Yes, downgrade shop"))
        # Since the queue (issue 13) the code is spent here and a worker runs the downgrade.
        queued = messages_text(page)
        assert "Code accepted; the downgrade is queued as operation" in queued, queued
        from tests.operations_support import start_worker, stop_worker, wait_until_finished, worker_env

        worker = start_worker(worker_env(settings))
        try:
            wait_until_finished(int(re.search(r"/operation/(\d+)/", page.url).group(1)))
        finally:
            stop_worker(worker)
        page.reload()
        done = page.locator("#operation-result").inner_text()
        assert f"Heads now: {MERGE}." in done, done
        page.context.close()
    assert heads(pg_url) == [MERGE]
    request.refresh_from_db()
    assert request.status == RollbackStatus.SUCCEEDED
    assert Rehearsal.objects.get(request=request).destroyed["rows"]["refunds"] == refunds


def heads(url: str) -> list[str]:
    return [row[0] for row in pg_query(url, "SELECT version_num FROM alembic_version ORDER BY 1")]
