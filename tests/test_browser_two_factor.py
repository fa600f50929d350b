"""Two-factor sign-in in a real browser (Debian's Chromium through Playwright), OPS_REQUIRE_2FA on.

A new operator logs in with the password, is sent to enrollment, "scans" the
QR code (the test reads the secret printed beside it, as a phone reads it from
the picture), confirms a token, saves the backup codes; logs out and back in
with a token; then signs in once with a backup code and is refused the same
code a second time. Pages are saved to screenshots/2fa-*.png at 1280x800 and
1920x1080.
"""

from __future__ import annotations

import re
import time

import pytest
from browser_support import chromium_browser, navigate, new_page, screenshot

from opsapp.models import AuditEvent, AuthenticatorDevice
from tests.two_factor_support import fresh_token, secret_from_text, totp

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SIZES = {"1280x800": (1280, 800), "1920x1080": (1920, 1080)}


@pytest.fixture
def browser(live_server, settings):
    settings.OPS_REQUIRE_2FA = True
    with chromium_browser() as browser:
        yield browser


def shots(page, name: str) -> None:
    for label, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        screenshot(page, f"2fa-{name}-{label}")


def password_step(page, username: str) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"pw-{username}")
    navigate(page, page.get_by_role("button", name="Log in"))


def log_out(page) -> None:
    navigate(page, page.locator("#logout-form button"))
    assert "Logged out" in page.content()


def test_an_operator_enrolls_signs_in_with_a_token_and_uses_a_backup_code_once(live_server, browser, operator):
    page = new_page(browser, live_server.url)

    # 1. The password, then enrollment instead of the console.
    password_step(page, "olga")
    assert "/admin/2fa/enroll/" in page.url
    assert page.locator("#otp-qr svg").count() == 1
    shots(page, "01-enroll")
    secret = secret_from_text(page.locator("#otp-secret").inner_text())
    page.get_by_role("textbox", name="Code").fill(totp(secret))
    navigate(page, page.get_by_role("button", name="Confirm"))
    codes = page.locator("#otp-backup-codes li").all_inner_texts()
    assert len(codes) == 10
    shots(page, "02-backup-codes")
    navigate(page, page.locator("#otp-continue"))
    assert page.url.endswith("/admin/")
    assert page.locator("#content").count() == 1 and "enroll" not in page.url

    # 2. Log out, back in: password, then a token from the phone.
    log_out(page)
    password_step(page, "olga")
    assert "/admin/2fa/verify/" in page.url
    shots(page, "03-token")
    wrong = f"{(int(totp(secret)) + 1) % 1_000_000:06d}"
    page.get_by_role("textbox", name="Code").fill(wrong)
    navigate(page, page.get_by_role("button", name="Verify"))
    assert "not valid" in page.locator(".errornote").inner_text()
    shots(page, "04-token-refused")
    time.sleep(1.1)  # django-otp's back-off: after one failure the device waits a second
    page.get_by_role("textbox", name="Code").fill(fresh_token(AuthenticatorDevice.objects.get(user=operator)))
    navigate(page, page.get_by_role("button", name="Verify"))
    assert page.url.endswith("/admin/")

    # 3. A backup code signs in once ...
    log_out(page)
    password_step(page, "olga")
    page.get_by_role("textbox", name="Code").fill(codes[0])
    navigate(page, page.get_by_role("button", name="Verify"))
    assert page.url.endswith("/admin/")
    assert "9 left" in page.locator("ul.messagelist").inner_text()
    # ... and never again.
    log_out(page)
    password_step(page, "olga")
    page.get_by_role("textbox", name="Code").fill(codes[0])
    navigate(page, page.get_by_role("button", name="Verify"))
    assert "/admin/2fa/verify/" in page.url
    assert "not valid" in page.locator(".errornote").inner_text()
    assert page.goto("/admin/opsapp/rollbackrequest/add/").url.split("?")[0].endswith("/admin/2fa/verify/")

    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert actions == [
        "otp_enrolled",
        "otp_token_rejected",
        "otp_backup_code_used",
        "otp_token_rejected",
    ]
    assert not re.search("|".join(c.replace("-", "") for c in codes), str(list(AuditEvent.objects.values())))
