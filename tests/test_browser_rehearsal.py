"""Rehearsal in a real browser (issue 14): an operator rehearses, follows it as an operation (the restore,
then each step) while a real `manage.py db_worker` runs it, the approver's email carries the result, and
the operator executes with the code from that email (queued too, run by the same worker).

The demo target `shop` (its real history, seeded) on a throwaway PostgreSQL database, with gate
"rehearsal" required. The worker writes its mail to a directory (OPS_TEST_MAIL_DIR) the test reads.
Screenshots go to screenshots/rehearsal-*.png.
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
from django.urls import reverse
from operations_support import mailed_by_worker, start_worker, stop_worker, worker_env

from opsapp.models import Operation, Rehearsal, RollbackStatus


def screenshot_dir():
    from browser_support import SCREENSHOT_DIR

    SCREENSHOT_DIR.mkdir(exist_ok=True)
    return SCREENSHOT_DIR


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


def follow(page) -> list[str]:
    """Let the operation page refresh itself until the operation ends; the progress lines it showed."""
    seen: list[str] = []
    for _ in range(300):
        line = page.locator("#operation-progress-text")
        if line.count():
            seen.append(line.inner_text())
        if page.locator("#operation-state").inner_text() not in ("queued", "running"):
            return seen
        with page.expect_navigation(timeout=10_000):  # the meta refresh, every 2 s
            pass
    raise AssertionError("the operation did not end")


def test_an_operator_rehearses_then_executes_with_the_code_from_the_email_carrying_the_result(
    live_server, shop_request, pg_url, operator, approver, settings, tmp_path
):
    request, snap = shop_request
    refunds = pg_query(pg_url, "SELECT count(*) FROM refunds")[0][0]
    emails = pg_query(pg_url, "SELECT count(email) FROM accounts")[0][0]
    worker = None
    try:
        with chromium_browser() as browser:
            page = new_page(browser, live_server.url)
            log_in(page, "olga", "pw-olga")
            submit_login(page)
            page.goto(reverse("admin:opsapp_rollbackrequest_change", args=[request.pk]))
            gate = page.locator("#gate-checklist tbody tr").filter(has_text="rehearsal")
            assert "no rehearsal" in gate.inner_text(), gate.inner_text()
            assert "Not rehearsed yet" in page.locator("#rehearsal").inner_text()

            navigate(page, page.get_by_role("button", name="Rehearse"))

            # The page returns at once, on the operation's own page.
            assert re.search(r"Rehearsal queued as operation #\d+", messages_text(page)), messages_text(page)
            assert page.locator("#operation-state").inner_text() == "queued"  # no worker yet
            operation_url = page.url
            navigate(page, page.get_by_role("link", name=f"Rollback request #{request.pk}"))
            queued = page.locator("#rehearsal-operation").inner_text()
            assert re.search(r"A rehearsal is queued as operation #\d+", queued), queued
            # No second Rehearse while this one waits: a note in its place links to the operation.
            assert page.get_by_role("button", name="Rehearse").count() == 0
            note = page.locator("#rehearse-in-progress")
            assert "one runs at a time" in note.inner_text(), note.inner_text()
            for width, height in ((1280, 800), (1920, 1080)):
                page.set_viewport_size({"width": width, "height": height})
                screenshot(page, f"rehearsal-queued-{width}x{height}")
                page.locator("#actions").screenshot(
                    path=str(screenshot_dir() / f"rehearsal-queued-actions-{width}.png")
                )
            navigate(page, note.get_by_role("link", name=re.compile(r"operation #\d+")))
            assert page.url == operation_url
            page.go_back()
            worker = start_worker(worker_env(settings, OPS_TEST_MAIL_DIR=str(tmp_path)))
            page.goto(operation_url)
            lines = follow(page)
            assert page.locator("#operation-state").inner_text() == "succeeded", page.content()
            assert lines[-1].startswith("copy restored; ") and lines[-1].endswith(" steps reverted on it"), lines
            result = page.locator("#operation-result").inner_text()
            assert f"rehearsed on a copy of snapshot #{snap.pk}: OK in" in result, result
            assert (
                f"destroys {refunds:,} rows of refunds" in result and f"{emails:,} values of accounts.email" in result
            )
            for width, height in ((1280, 800), (1920, 1080)):
                page.set_viewport_size({"width": width, "height": height})
                screenshot(page, f"rehearsal-operation-{width}x{height}")

            navigate(page, page.get_by_role("link", name=f"Rollback request #{request.pk}"))
            result = page.locator("#rehearsal-result").inner_text()
            assert "OK in" in result
            for width, height in ((1280, 800), (1920, 1080)):
                page.set_viewport_size({"width": width, "height": height})
                screenshot(page, f"rehearsal-request-{width}x{height}")
            assert heads(pg_url) == [HEAD]  # the rehearsal ran on a copy

            # The approver's newest email (sent by the worker) carries the rehearsal's result and a fresh code.
            outbox = mailed_by_worker(tmp_path)
            assert outbox and approver.email in outbox[-1].to
            body = outbox[-1].body
            assert re.search(rf"rehearsed on a copy of snapshot #{snap.pk}: OK in [\d.]+ s; destroys ", body), body
            code = codes_mailed_to(outbox, approver.email)[-1]

            # Executing is two steps: the confirmation page, then the code; the downgrade is queued too.
            navigate(page, page.get_by_role("link", name="Execute the downgrade…"))
            page.get_by_role("textbox", name="Verification code").fill(code)
            navigate(page, page.get_by_role("button", name="Yes, downgrade shop"))
            assert "queued as operation" in messages_text(page), messages_text(page)
            follow(page)
            done = page.locator("#operation-result").inner_text()
            assert f"Heads now: {MERGE}." in done, done
            page.context.close()
    finally:
        if worker is not None:
            stop_worker(worker)
    assert heads(pg_url) == [MERGE]
    request.refresh_from_db()
    assert request.status == RollbackStatus.SUCCEEDED
    assert Rehearsal.objects.get(request=request).destroyed["rows"]["refunds"] == refunds
    assert Operation.objects.filter(request=request, kind="rehearsal", state="succeeded").count() == 1


def heads(url: str) -> list[str]:
    return [row[0] for row in pg_query(url, "SELECT version_num FROM alembic_version ORDER BY 1")]
