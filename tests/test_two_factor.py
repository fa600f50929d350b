"""Two-factor sign-in: token after the password, enrollment, backup codes, reset, commands, throttling.

OPS_REQUIRE_2FA is off in the test settings; every test here turns it on with
the `settings` fixture (the middleware reads it per request).
"""

from __future__ import annotations

import json
import re

import pytest
from django.contrib import admin
from django.core.management import CommandError, call_command
from django.urls import reverse
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from opsapp.checks import check_two_factor
from opsapp.models import AuditEvent, AuthenticatorDevice, BackupCode, BackupCodeDevice
from tests.two_factor_support import fresh_token, make_device, secret_from_text, totp, verified_login

pytestmark = pytest.mark.django_db

VERIFY = "/admin/2fa/verify/"
ENROLL = "/admin/2fa/enroll/"


@pytest.fixture(autouse=True)
def _require_2fa(settings):
    settings.OPS_REQUIRE_2FA = True


def password_login(client, username: str, password: str | None = None):
    return client.post(
        reverse("admin:login"), {"username": username, "password": password or f"pw-{username}", "next": "/admin/"}
    )


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def all_audit_text() -> str:
    return json.dumps([[e.message, e.detail] for e in AuditEvent.objects.all()])


def secret_on_page(response) -> bytes:
    text = re.search(r'data-secret="([A-Z2-7 ]+)"', response.content.decode())[1]
    return secret_from_text(text)


def enroll(client, user) -> tuple[bytes, list[str]]:
    """Enroll through the pages; return the secret and the backup codes shown."""
    page = client.get(ENROLL)
    secret = secret_on_page(page)
    response = client.post(ENROLL, {"token": totp(secret), "next": "/admin/"})
    codes = re.findall(r"<li>([a-z0-9]{5}-[a-z0-9]{5})</li>", response.content.decode())
    return secret, codes


# ------------------------------------------------------------------ the gate
def test_after_the_password_a_user_without_a_device_is_sent_to_enrollment(client, operator):
    response = password_login(client, "olga")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith(ENROLL)


def test_after_the_password_a_user_with_a_device_is_asked_for_a_token(client, operator):
    make_device(operator)
    password_login(client, "olga")
    response = client.get("/admin/opsapp/target/")
    assert response.status_code == 302
    assert response["Location"] == f"{VERIFY}?next=%2Fadmin%2Fopsapp%2Ftarget%2F"


def test_without_the_setting_the_password_is_enough(client, settings, operator):
    settings.OPS_REQUIRE_2FA = False
    password_login(client, "olga")
    assert client.get("/admin/").status_code == 200
    assert client.get(ENROLL).status_code == 302  # nothing to do there


def test_auditors_need_a_second_factor_too(client, auditor):
    password_login(client, "aude")
    assert client.get("/admin/opsapp/auditevent/").status_code == 302


# ------------------------------------------------------------------ enrollment
def test_enrollment_shows_a_server_rendered_qr_code_and_the_secret(client, operator):
    password_login(client, "olga")
    response = client.get(ENROLL)
    body = response.content.decode()
    assert response.status_code == 200
    assert "<svg" in body and "<path" in body
    assert "http" not in body.split("<svg", 1)[1].split("</svg>", 1)[0].replace("http://www.w3.org", "")
    assert len(secret_on_page(response)) == 20
    # The same pending secret on reload (the phone may have scanned it already); nothing stored yet.
    assert secret_on_page(client.get(ENROLL)) == secret_on_page(response)
    assert not AuthenticatorDevice.objects.exists()


def test_enrollment_confirms_one_token_then_shows_ten_backup_codes_once(client, operator):
    password_login(client, "olga")
    secret, codes = enroll(client, operator)
    assert len(codes) == 10 and len(set(codes)) == 10
    device = AuthenticatorDevice.objects.get(user=operator)
    assert device.confirmed and device.bin_key == secret
    assert BackupCode.objects.filter(device__user=operator).count() == 10
    assert client.get("/admin/").status_code == 200  # verified by the enrollment itself
    (event,) = events("otp_enrolled")
    assert event.actor == "olga" and event.detail["backup_codes_issued"] == 10
    text = all_audit_text()
    assert secret.hex() not in text and device.bin_key.hex() not in text
    assert not any(code.replace("-", "") in text or code in text for code in codes)
    # Backup codes are not shown again: the page now sends the user on.
    assert client.get(ENROLL).status_code == 302


def test_a_wrong_enrollment_token_is_refused_audited_and_stores_nothing(client, operator):
    password_login(client, "olga")
    secret = secret_on_page(client.get(ENROLL))
    wrong = f"{(int(totp(secret)) + 500_000) % 1_000_000:06d}"
    response = client.post(ENROLL, {"token": wrong})
    assert response.status_code == 200 and "does not match" in response.content.decode()
    assert not AuthenticatorDevice.objects.exists() and not BackupCodeDevice.objects.exists()
    (event,) = events("otp_token_rejected")
    assert event.outcome == "refused" and event.detail["stage"] == "enrollment"
    assert wrong not in all_audit_text()
    assert client.get("/admin/").status_code == 302


# ------------------------------------------------------------------ tokens
def test_a_fresh_token_after_the_password_opens_the_console(client, operator):
    device = make_device(operator)
    password_login(client, "olga")
    response = client.post(VERIFY, {"token": fresh_token(device), "next": "/admin/opsapp/target/"})
    assert response.status_code == 302 and response["Location"] == "/admin/opsapp/target/"
    assert client.get("/admin/opsapp/target/").status_code == 200


def test_a_wrong_token_is_refused_and_audited_and_the_session_stays_unverified(client, operator):
    device = make_device(operator)
    password_login(client, "olga")
    good = totp(device.bin_key)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    response = client.post(VERIFY, {"token": wrong})
    assert response.status_code == 200 and "not valid" in response.content.decode()
    assert client.get("/admin/").status_code == 302
    (event,) = events("otp_token_rejected")
    assert event.actor == "olga" and event.outcome == "refused" and event.detail["kind"] == "totp"
    assert wrong not in all_audit_text()


def test_a_token_is_not_accepted_twice(client, operator, django_user_model):
    device = make_device(operator)
    password_login(client, "olga")
    token = fresh_token(device)
    assert client.post(VERIFY, {"token": token})["Location"] == "/admin/"
    client.logout()
    password_login(client, "olga")
    assert client.post(VERIFY, {"token": token}).status_code == 200
    assert client.get("/admin/").status_code == 302


def test_a_backup_code_works_once_and_its_use_is_audited(client, operator):
    password_login(client, "olga")
    _, codes = enroll(client, operator)
    client.logout()
    password_login(client, "olga")
    assert client.post(VERIFY, {"token": codes[0].upper()})["Location"] == "/admin/"
    (event,) = events("otp_backup_code_used")
    assert event.detail["backup_codes_left"] == 9 and codes[0] not in all_audit_text()
    client.logout()
    password_login(client, "olga")
    response = client.post(VERIFY, {"token": codes[0]})
    assert response.status_code == 200 and "not valid" in response.content.decode()
    assert events("otp_token_rejected")[-1].detail["kind"] == "backup code"
    assert BackupCode.objects.filter(device__user=operator).count() == 9


def test_failed_tokens_count_towards_the_axes_lockout(client, settings, operator):
    from axes.models import AccessAttempt

    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    device = make_device(operator)
    password_login(client, "olga")
    for _ in range(3):
        client.post(VERIFY, {"token": "000000"}, REMOTE_ADDR="127.0.0.1")
    assert AccessAttempt.objects.get(username="olga").failures_since_start >= 3
    response = client.post(VERIFY, {"token": fresh_token(device)}, REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 429
    assert client.get("/admin/").status_code == 302
    # The password form is locked for that user too.
    client.logout()
    assert password_login(client, "olga").status_code == 429


# ------------------------------------------------------------------ reset
def test_a_superuser_resets_a_users_devices_audited_without_the_secret(client, admin_user, operator):
    device = make_device(operator)
    key = device.bin_key.hex()
    verified_login(client, admin_user)
    url = reverse("opsapp_2fa_reset", args=[operator.pk])
    page = client.get(url)
    assert page.status_code == 200 and key not in page.content.decode()
    assert url in client.get(reverse("admin:auth_user_change", args=[operator.pk])).content.decode()
    response = client.post(url)
    assert response.status_code == 302
    assert not AuthenticatorDevice.objects.filter(user=operator).exists()
    (event,) = events("otp_reset")
    assert event.actor == "admin" and event.detail["user"] == "olga"
    assert key not in all_audit_text()


def test_only_a_superuser_may_reset(client, operator, approver):
    make_device(approver)
    verified_login(client, operator)
    assert client.post(reverse("opsapp_2fa_reset", args=[approver.pk])).status_code == 403
    assert AuthenticatorDevice.objects.filter(user=approver).exists() and not events("otp_reset")


def test_django_otps_own_device_pages_are_not_in_the_admin():
    assert not admin.site.is_registered(TOTPDevice) and not admin.site.is_registered(StaticDevice)


# ------------------------------------------------------------------ commands
def test_otp_enroll_prints_a_provisioning_uri_and_backup_codes_and_is_audited(capsys, operator):
    call_command("otp_enroll", "olga", "--json")
    out = json.loads(capsys.readouterr().out)
    device = AuthenticatorDevice.objects.get(user=operator)
    assert out["uri"].startswith("otpauth://totp/") and out["uri"] == device.config_url
    assert len(out["backup_codes"]) == 10
    (event,) = events("otp_enrolled")
    assert event.detail["via"] == "command" and event.actor.startswith("cli:")
    assert device.bin_key.hex() not in all_audit_text()
    with pytest.raises(CommandError, match="otp_reset"):
        call_command("otp_enroll", "olga")
    assert len(events("otp_enrolled")) == 1


def test_otp_reset_removes_the_devices_and_is_audited(capsys, operator):
    call_command("otp_enroll", "olga", "--json")
    capsys.readouterr()
    call_command("otp_reset", "olga")
    assert "Removed 2" in capsys.readouterr().out
    assert not AuthenticatorDevice.objects.exists() and not BackupCodeDevice.objects.exists()
    assert events("otp_reset")[0].detail["devices"] == ["AuthenticatorDevice", "BackupCodeDevice"]
    with pytest.raises(CommandError):
        call_command("otp_reset", "nobody")


# ------------------------------------------------------------------ deploy check
def test_the_deploy_check_errors_when_2fa_is_off_in_production(settings):
    settings.DEBUG = False
    settings.OPS_REQUIRE_2FA = False
    settings.OPS_ALLOW_NO_2FA = False
    assert [e.id for e in check_two_factor()] == ["opsapp.E020"]
    settings.OPS_ALLOW_NO_2FA = True
    assert check_two_factor() == []
    settings.OPS_ALLOW_NO_2FA = False
    settings.OPS_REQUIRE_2FA = True
    assert check_two_factor() == []


def test_check_deploy_fails_in_a_production_process_without_2fa(tmp_path):
    from tests.test_deploy_settings import production_env, run_manage

    env = production_env(tmp_path, OPS_REQUIRE_2FA="0")
    proc = run_manage(env, "check", "--deploy")
    assert proc.returncode == 1 and "opsapp.E020" in proc.stderr
    proc = run_manage({**env, "OPS_ALLOW_NO_2FA": "1"}, "check", "--deploy")
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ a NUL byte in a POSTed `next`
NUL_NEXTS = ["/admin/\x00", "/admin/opsapp/target/\x00evil", "\x00/evil.example", "/\x00/evil.example"]


@pytest.mark.parametrize("next_url", NUL_NEXTS)
def test_a_nul_in_the_posted_next_of_the_token_page_goes_to_the_index(client, operator, next_url):
    client.raise_request_exception = True
    device = make_device(operator)
    password_login(client, "olga")
    response = client.post(VERIFY, {"token": fresh_token(device), "next": next_url})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    page = client.get(VERIFY, {"next": "/admin/"})  # the verified session passes through the gate
    assert page.status_code == 302 and "\x00" not in page["Location"]


@pytest.mark.parametrize("next_url", NUL_NEXTS)
def test_a_nul_in_the_posted_next_of_enrollment_never_reaches_a_page_or_a_header(client, operator, next_url):
    client.raise_request_exception = True
    password_login(client, "olga")
    page = client.get(ENROLL)
    secret = secret_on_page(page)
    response = client.post(ENROLL, {"token": totp(secret), "next": next_url})
    assert response.status_code == 200
    assert "\x00" not in response.content.decode()
    assert 'id="otp-continue" href="/admin/"' in response.content.decode()
    assert AuthenticatorDevice.objects.filter(user=operator, confirmed=True).exists()


@pytest.mark.parametrize("next_url", NUL_NEXTS)
def test_a_nul_in_the_posted_next_of_the_login_page_is_not_followed(client, operator, settings, next_url):
    settings.OPS_REQUIRE_2FA = False
    client.raise_request_exception = True
    response = client.post(reverse("admin:login"), {"username": "olga", "password": "pw-olga", "next": next_url})
    assert response.status_code in (302, 400)
    if response.status_code == 302:
        assert "\x00" not in response["Location"]
