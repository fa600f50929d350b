"""Helpers for the real-browser tests: Debian's Chromium driven by Playwright's sync API.

The browser is the system one (/usr/bin/chromium), never a downloaded build.
Where it is missing the tests skip, except when OPS_REQUIRE_BROWSER=1 (CI),
where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Root needs --no-sandbox; the rest stop Chromium from phoning home (this machine refuses those connections).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_DIR = REPO_ROOT / "screenshots"
DEFAULT_TIMEOUT_MS = 15_000
CODE_RE = re.compile(r"^Code: (\d+)\s*$", re.MULTILINE)


def require_chromium() -> None:
    """Skip (or, with OPS_REQUIRE_BROWSER=1, fail) when the system Chromium is not installed."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    message = f"{CHROMIUM} is not installed (apt-get install chromium); the real-browser tests need it."
    if os.environ.get("OPS_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " OPS_REQUIRE_BROWSER=1: a missing browser is a failure.", pytrace=False)
    pytest.skip(message)


@contextmanager
def chromium_browser() -> Iterator[object]:
    """A headless Chromium for the duration of the block.

    Playwright's sync API keeps an asyncio loop marked as running in the main
    thread while it is started, which makes Django refuse ORM calls made from
    the test body ("async context"). The tests are plain sync code, so Django's
    guard is lifted for exactly as long as Playwright runs, then restored.
    """
    from django.db import connections
    from playwright.sync_api import sync_playwright

    require_chromium()
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()
                # While Playwright runs, asgiref keeps Django's connections of this thread in
                # a context-local store, apart from the usual thread-local ones: close those
                # now, or the test database could not be dropped at the end of the session.
                connections.close_all()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def new_page(browser, base_url: str):
    """A fresh context (own cookies) and page with a short default timeout and downloads allowed."""
    context = browser.new_context(base_url=base_url, accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    return context.new_page()


def screenshot(page, name: str) -> Path:
    """Save the whole page as screenshots/<name>.png (the folder is git-ignored)."""
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page, username: str, password: str) -> None:
    """Log in through the admin login form, as a person would."""
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)


def submit_login(page, device=None) -> None:
    """Press "Log in"; with 2FA on, give `device`'s current token (computed from its secret, as a phone does)."""
    page.get_by_role("button", name="Log in").click()
    if device is not None:
        from tests.two_factor_support import fresh_token

        page.wait_for_url(re.compile(r"/admin/2fa/verify/"))
        page.get_by_role("textbox", name="Code").fill(fresh_token(device))
        page.get_by_role("button", name="Verify").click()
    page.wait_for_url(re.compile(r"/admin/$"))


def navigate(page, locator) -> None:
    """Click a link or submit button and wait until the page it leads to has loaded."""
    with page.expect_navigation():
        locator.click()


def csrf_post(page, url: str, data: dict[str, str] | None = None):
    """POST a form from the logged-in browser context with a valid CSRF token (so only permissions decide)."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    form = {"csrfmiddlewaretoken": token, **(data or {})}
    return page.request.post(url, form=form, headers={"Referer": page.url}, max_redirects=0)


def messages_text(page) -> str:
    """The text of the admin's message list (success/warning/error), empty when none."""
    messages = page.locator("ul.messagelist")
    return " ".join(messages.all_inner_texts()) if messages.count() else ""


def codes_mailed_to(outbox, address: str) -> list[str]:
    """Verification codes in the test outbox addressed to `address`, oldest first."""
    return [code for message in outbox if address in message.to for code in CODE_RE.findall(message.body)]
