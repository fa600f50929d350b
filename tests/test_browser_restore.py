"""In the real Chromium: an operator restores a snapshot into a destination and follows it (issue 13).

The restore runs in a real worker process; the test holds pg_restore at its
first CREATE (a SHARE lock on the destination's pg_class) long enough to see
the running operation, then lets it finish. Pages are screenshotted at
1280 x 800 and 1920 x 1080 (screenshots/restore-*.png) and must fit the window.
"""

from __future__ import annotations

import re
from datetime import timedelta

import operations_support
import pytest
from browser_support import log_in, navigate, new_page, screenshot, submit_login
from rollback_fixtures import build_rollback_env, take_verified_snapshot, wait_for
from test_browser import _role_groups, browser  # noqa: F401 (fixtures)
from test_browser_pages import page_overflow
from test_operations_restore import (
    PASSWORD,
    pg_restore_held_at_its_first_create,
    restore_worker_env,
    waiting_on_a_lock,
)

from tests.two_factor_support import make_device

pytest_plugins = ["rollback_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = [(1280, 800), (1920, 1080)]


@pytest.fixture
def small_env(roles_present, pg_database_factory, script_dir_factory, configure_target, snapshot_dir):
    url = pg_database_factory()
    return build_rollback_env("rbt", url, script_dir_factory(url), configure_target)


@pytest.fixture
def destination(pg_database_factory, settings) -> str:
    url = pg_database_factory().replace("postgres@", f"postgres:{PASSWORD}@")
    settings.OPS_RESTORE_DESTINATIONS = {"scratch": {"URL": url, "URL_FILE": ""}}
    return url


def shoot(page, name: str, problems: dict[str, list[str]]) -> None:
    """Screenshots at both sizes; at 1280 px, what sticks out of the window."""
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        screenshot(page, f"restore-{name}-{width}")
        if width == 1280 and page_overflow(page):
            problems[name] = page_overflow(page)
    page.set_viewport_size({"width": 1280, "height": 800})


def test_an_operator_restores_a_snapshot_into_a_destination_and_follows_it_to_the_end(
    live_server,
    browser,  # noqa: F811
    small_env,
    destination,
    operator,
    settings,
    django_user_model,
):
    from opsapp.models import Operation

    snap = take_verified_snapshot(small_env, operator)
    device = make_device(django_user_model.objects.get(username=operator.username))
    page = new_page(browser, live_server.url)
    log_in(page, operator.username, "pw-" + operator.username)
    submit_login(page, device)
    problems: dict[str, list[str]] = {}

    page.goto(f"/admin/opsapp/snapshot/{snap.pk}/change/")
    shoot(page, "snapshot", problems)
    navigate(page, page.get_by_role("link", name="Restore into a destination…"))
    assert PASSWORD not in page.content() and "scratch" in page.content()
    shoot(page, "confirm", problems)
    navigate(page, page.get_by_role("button", name=f"Yes, restore snapshot #{snap.pk}"))
    op = Operation.objects.get()
    assert re.search(rf"/admin/opsapp/operation/{op.pk}/change/$", page.url)
    assert page.locator("#operation-state").inner_text() == "queued"
    shoot(page, "queued", problems)

    worker = operations_support.start_worker(
        restore_worker_env(settings, small_env, destination), "--batch", split_output=True
    )
    try:
        with pg_restore_held_at_its_first_create(destination):
            wait_for(lambda: waiting_on_a_lock(destination), timeout=60, what="pg_restore to start", proc=worker)
            page.reload()
            assert page.locator("#operation-state").inner_text() == "running"
            assert "into destination scratch" in page.locator("#operation-progress").inner_text()
            shoot(page, "running", problems)
            page.goto(f"/admin/opsapp/operation/{op.pk}/cancel/")
            assert "pg_restore is stopped" in page.content()
            shoot(page, "cancel-confirm", problems)  # not confirmed: the restore goes on
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    page.goto(f"/admin/opsapp/operation/{op.pk}/change/")
    assert page.locator("#operation-state").inner_text() == "succeeded"
    assert "restored into destination 'scratch'" in page.locator("#operation-result").inner_text()
    assert PASSWORD not in page.content()
    shoot(page, "succeeded", problems)
    assert problems == {}


def test_a_running_snapshot_says_its_total_and_time_left_are_estimates(
    live_server,
    browser,  # noqa: F811
    small_env,
    operator,
    django_user_model,
):
    """A screenshot of the running snapshot's page (its row set as a worker would write it)."""
    from django.utils import timezone

    from opsapp.models import Operation, OperationKind
    from opsapp.services.actors import Actor
    from opsapp.services.operations.queue import create_operation

    earlier = take_verified_snapshot(small_env, operator)
    op = create_operation(OperationKind.SNAPSHOT, small_env.name, actor=Actor.from_user(operator))
    now = timezone.now()
    Operation.objects.filter(pk=op.pk).update(
        state="running",
        started_at=now - timedelta(seconds=95),
        progress_since=now - timedelta(seconds=20),
        heartbeat_at=now,
        worker_host="worker-1",
        worker_pid=4242,
        progress_done=60 << 20,
        progress_total=200 << 20,
        progress_label="dumping",
        progress_estimate=f"estimated from snapshot #{earlier.pk}, whose archive was 31% of the database's size "
        "(the database is 645.2 MB now)",
    )
    device = make_device(django_user_model.objects.get(username=operator.username))
    page = new_page(browser, live_server.url)
    log_in(page, operator.username, "pw-" + operator.username)
    submit_login(page, device)
    page.goto(f"/admin/opsapp/operation/{op.pk}/change/")
    text = page.locator("#operation-progress").inner_text()
    assert "of about 200.0" in text and "(an estimate at the rate so far)" in text
    assert f"Final size estimated from snapshot #{earlier.pk}" in text
    problems: dict[str, list[str]] = {}
    shoot(page, "snapshot-eta", problems)
    assert problems == {}
