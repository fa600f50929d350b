"""Live progress in a real browser (issue 13): a snapshot of a target whose dump takes several seconds,
then a downgrade, both queued from the admin and followed on the operation page, which refreshes
itself (meta refresh, no JavaScript needed) while a real `manage.py db_worker` runs them.
Screenshots at 1280x800 and 1920x1080 go to /tmp/shots-jobs/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_support import (
    chromium_browser,
    codes_mailed_to,
    log_in,
    messages_text,
    navigate,
    new_page,
    submit_login,
)
from conftest import create_pg_database, drop_pg_database
from django.core import mail
from django.urls import reverse
from operations_support import fill_big_table, start_worker, stop_worker, worker_env
from rollback_fixtures import build_rollback_env, make_request

from opsapp.models import Operation, RollbackRequest

pytest_plugins = ["rollback_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SHOTS = Path("/tmp/shots-jobs")


@pytest.fixture
def big_target(roles_present, script_dir_factory, configure_target, snapshot_dir):
    url = create_pg_database("ops_jobs")
    try:
        env = build_rollback_env("bigt", url, script_dir_factory(url), configure_target)
        # A step slow enough to be seen on the page while it is being reverted.
        env.add_revision("r4", "r3", downgrade="op.execute('SELECT pg_sleep(3)')")
        fill_big_table(url, 450_000)
        yield env
    finally:
        drop_pg_database(url)


def shots(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    for width, height in ((1280, 800), (1920, 1080)):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SHOTS / f"{name}-{width}x{height}.png"))
    page.set_viewport_size({"width": 1280, "height": 900})


def follow(page, seen_labels: list[str]) -> list[int]:
    """Let the page refresh itself until the operation ends; the progress-bar values it showed meanwhile."""
    values: list[int] = []
    for _ in range(200):
        state = page.locator("#operation-state").inner_text()
        bar = page.locator("#operation-bar")
        if bar.count() and bar.get_attribute("value") is not None:
            values.append(int(bar.get_attribute("value")))
        label = page.locator("#operation-label")
        if label.count():
            seen_labels.append(label.inner_text())
        if state not in ("queued", "running"):
            return values
        with page.expect_navigation(timeout=10_000):  # the meta refresh, every 2 s
            pass
    raise AssertionError("the operation did not end")


def test_an_operator_follows_a_long_snapshot_then_a_downgrade_on_the_live_operation_page(
    live_server, big_target, operator, approver, settings
):
    from opsapp.models import Target

    worker = start_worker(worker_env(settings))
    try:
        with chromium_browser() as browser:
            page = new_page(browser, live_server.url)
            log_in(page, "olga", "pw-olga")
            submit_login(page)
            target = Target.objects.get(name="bigt")
            page.goto(reverse("admin:opsapp_target_change", args=[target.pk]))
            navigate(page, page.locator(".object-tools").get_by_role("button", name="Take snapshot"))
            # The page returns at once: the dump has not finished when it is shown.
            assert page.locator("#operation-state").inner_text() in ("queued", "running")
            assert re.search(r"queued as operation #\d+", messages_text(page))
            labels: list[str] = []
            page.wait_for_selector("#operation-bar[value]", timeout=30_000)
            shots(page, "operation-snapshot-running")
            values = follow(page, labels)
            moving = sorted(set(v for v in values if 0 < v < 100))
            assert len(moving) >= 2, values  # the bar moved through at least two values before the end
            assert values[-1] == 100
            result = page.locator("#operation-result").inner_text()
            assert "taken and verified" in result, result
            shots(page, "operation-snapshot-done")
            snap_op = Operation.objects.get(kind="snapshot")
            assert snap_op.snapshot.status == "verified"

            request = make_request(big_target, operator, snapshot=snap_op.snapshot)
            (code,) = codes_mailed_to(mail.outbox, approver.email)
            page.goto(reverse("admin:opsapp_rollbackrequest_execute", args=[request.pk]))
            page.get_by_role("textbox", name="Verification code").fill(code)
            navigate(page, page.get_by_role("button", name="Yes, downgrade bigt"))
            assert "queued as operation" in messages_text(page)
            labels = []
            follow(page, labels)
            assert any(label.startswith("reverting r4 (step 1 of 3)") for label in labels), labels
            assert "Heads now: r1." in page.locator("#operation-result").inner_text()
            shots(page, "operation-downgrade-done")
            assert RollbackRequest.objects.get(pk=request.pk).status == "succeeded"
            assert big_target.heads() == ["r1"]
            page.goto(reverse("admin:opsapp_operation_changelist"))
            shots(page, "operations-list")
            page.goto(reverse("admin:index"))
            shots(page, "dashboard")
    finally:
        stop_worker(worker)
