"""Two-factor secrets at rest: the console's database never holds one in clear.

Each test reads every table of the console DB as text (and every session,
decoded as Django decodes it) and looks for the TOTP secret, in hex, base32
and raw form, and for every backup code. Sessions are signed, not encrypted:
whatever a view puts in one is readable by anyone who reads the table.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.management import CommandError
from django.db import connection

pytestmark = pytest.mark.django_db

ENROLL = "/admin/2fa/enroll/"


@pytest.fixture(autouse=True)
def _require_2fa(settings):
    settings.OPS_REQUIRE_2FA = True


def database_text() -> str:
    """Every row of every table of the console DB, as text, plus every session decoded."""
    parts = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT t::text FROM "{table}" t')
            parts.extend(row[0] for row in cursor.fetchall())
    for session in Session.objects.all():
        parts.append(repr(SessionStore().decode(session.session_data)))
    return "\n".join(parts).lower()


def forms_of_secret(secret: bytes) -> list[str]:
    b32 = base64.b32encode(secret).decode()
    return [secret.hex(), b32.lower(), b32.rstrip("=").lower()]


def forms_of_code(code: str) -> list[str]:
    return [code.lower(), code.replace("-", "").lower()]


def secret_on_page(response) -> bytes:
    text = re.search(r'data-secret="([A-Z2-7 ]+)"', response.content.decode())[1]
    return base64.b32decode(text.replace(" ", ""))


def test_the_pending_enrollment_secret_is_not_in_the_session_in_clear(client, operator):
    client.force_login(operator)
    secret = secret_on_page(client.get(ENROLL))
    text = database_text()
    assert "_auth_user_id" in text  # the session is there and was decoded
    found = [form for form in forms_of_secret(secret) if form in text]
    assert found == [], "the pending TOTP secret is readable in the console DB"


def test_after_enrollment_neither_the_secret_nor_a_backup_code_is_in_the_database(client, operator):
    from tests.two_factor_support import totp

    client.force_login(operator)
    secret = secret_on_page(client.get(ENROLL))
    response = client.post(ENROLL, {"token": totp(secret), "next": "/admin/"})
    codes = re.findall(r"<li>([a-z0-9]{5}-[a-z0-9]{5})</li>", response.content.decode())
    assert len(codes) == 10
    text = database_text()
    assert [form for form in forms_of_secret(secret) if form in text] == []
    assert [code for code in codes if any(form in text for form in forms_of_code(code))] == []


def test_a_headless_enrollment_stores_nothing_in_clear_either(capsys, operator):
    from django.core.management import call_command

    call_command("otp_enroll", "olga", "--json")
    out = json.loads(capsys.readouterr().out)
    secret = base64.b32decode(parse_qs(urlparse(out["uri"]).query)["secret"][0])
    text = database_text()
    assert [form for form in forms_of_secret(secret) if form in text] == []
    assert [code for code in out["backup_codes"] if any(form in text for form in forms_of_code(code))] == []


# ------------------------------------------------------------------ the data migration
def migration_0007():
    """The migration module and the historical apps it runs with (django-otp's models as they were)."""
    from importlib import import_module

    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connection)
    (name,) = [n for app, n in loader.disk_migrations if app == "opsapp" and "secrets_at_rest" in n]
    return import_module(f"opsapp.migrations.{name}"), loader.project_state(("opsapp", name), at_end=True).apps


def test_the_migration_moves_django_otps_clear_devices_and_nobody_loses_theirs(operator, approver):
    """Rows as the previous release wrote them (django-otp's models), moved by the migration's own code."""
    from opsapp.models import AuditEvent, AuthenticatorDevice, BackupCode, BackupCodeDevice
    from opsapp.services import two_factor
    from opsapp.services.actors import Actor
    from tests.two_factor_support import totp

    migration, apps = migration_0007()
    TOTPDevice = apps.get_model("otp_totp", "TOTPDevice")
    StaticDevice = apps.get_model("otp_static", "StaticDevice")
    StaticToken = apps.get_model("otp_static", "StaticToken")
    secret, other = bytes(range(20)), bytes(range(20, 40))
    TOTPDevice.objects.create(
        user_id=operator.pk, name="authenticator", key=secret.hex(), last_t=5, throttling_failure_count=2
    )
    TOTPDevice.objects.create(user_id=approver.pk, name="authenticator", key=other.hex())
    static = StaticDevice.objects.create(user_id=operator.pk, name="backup codes")
    for token in ("abcde23456", "fghjk78923"):
        StaticToken.objects.create(device=static, token=token)

    migration.seal_and_hash(apps, None)

    assert not TOTPDevice.objects.exists() and not StaticToken.objects.exists() and not StaticDevice.objects.exists()
    text = database_text()
    assert secret.hex() not in text and other.hex() not in text and "abcde23456" not in text
    moved = AuthenticatorDevice.objects.get(user=operator)
    assert moved.bin_key == secret and moved.last_t == 5 and moved.throttling_failure_count == 2
    assert AuthenticatorDevice.objects.get(user=approver).bin_key == other
    assert BackupCode.objects.filter(device__user=operator).count() == 2
    # They sign in as before: a token from the same phone, a backup code from the same paper.
    AuthenticatorDevice.objects.filter(pk=moved.pk).update(throttling_failure_count=0)
    actor = Actor.from_user(operator)
    assert two_factor.verify(actor, operator, totp(secret)).device == moved
    used = two_factor.verify(actor, operator, "ABCDE-23456")
    assert isinstance(used.device, BackupCodeDevice) and used.backup_codes_left == 1
    assert AuditEvent.objects.filter(action="otp_backup_code_used").count() == 1


def test_the_migration_reversed_gives_the_authenticator_back_to_django_otp(operator):
    from tests.two_factor_support import make_device

    device = make_device(operator)
    migration, apps = migration_0007()
    migration.unseal_back(apps, None)
    assert apps.get_model("otp_totp", "TOTPDevice").objects.get(user_id=operator.pk).key == device.bin_key.hex()


def test_django_otps_clear_text_models_refuse_to_store_anything(operator):
    from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
    from django_otp.plugins.otp_totp.models import TOTPDevice

    with pytest.raises(RuntimeError, match="in clear"):
        TOTPDevice.objects.create(user=operator, name="x")
    device = StaticDevice.objects.create(user=operator, name="x")  # holds no secret itself
    with pytest.raises(RuntimeError, match="in clear"):
        StaticToken.objects.create(device=device, token="abcdefgh")
    assert not TOTPDevice.objects.exists() and not StaticToken.objects.exists()


# ------------------------------------------------------------------ key rotation
OLD_KEY = "old-secret-key-for-the-rotation-tests-0123456789"
NEW_KEY = "new-secret-key-for-the-rotation-tests-9876543210"


@pytest.fixture
def enrolled_under_old_key(settings, capsys, operator):
    """olga enrolled (authenticator + backup codes) while SECRET_KEY was OLD_KEY."""
    from django.core.management import call_command

    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = OLD_KEY, []
    call_command("otp_enroll", "olga", "--json")
    out = json.loads(capsys.readouterr().out)

    secret = base64.b32decode(parse_qs(urlparse(out["uri"]).query)["secret"][0])
    return secret, out["backup_codes"]


def test_after_a_rotation_the_fallback_key_still_opens_secrets_and_otp_rekey_moves_them(
    settings, capsys, operator, enrolled_under_old_key
):
    from django.core.management import call_command

    from opsapp.models import AuditEvent, AuthenticatorDevice
    from opsapp.services import sealing, two_factor
    from opsapp.services.actors import Actor
    from tests.two_factor_support import totp

    secret, codes = enrolled_under_old_key
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_KEY, [OLD_KEY]
    device = AuthenticatorDevice.objects.get(user=operator)
    sealed_before = device.sealed_key
    assert device.bin_key == secret and not sealing.is_current(sealed_before, sealing.TOTP_KEY)
    actor = Actor.from_user(operator)
    assert two_factor.verify(actor, operator, codes[0]).backup_code_used  # hashed under the fallback: still works

    with pytest.raises(CommandError, match="run otp_rekey"):
        call_command("otp_rekey", "--check")
    assert "1 to re-encrypt" in capsys.readouterr().out
    assert AuthenticatorDevice.objects.get(pk=device.pk).sealed_key == sealed_before  # --check writes nothing
    assert not AuditEvent.objects.filter(action="otp_rekeyed").exists()

    call_command("otp_rekey", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["resealed"] == 1 and report["unreadable"] == [] and report["backup_codes_on_old_key"] == ["olga"]
    (event,) = AuditEvent.objects.filter(action="otp_rekeyed")
    assert event.outcome == "success" and event.detail["resealed"] == 1
    assert secret.hex() not in json_of(event) and sealed_before not in json_of(event)

    # The old key can go: the authenticator opens with the new one alone (and signs in).
    settings.SECRET_KEY_FALLBACKS = []
    device.refresh_from_db()
    assert device.sealed_key != sealed_before and device.bin_key == secret
    assert two_factor.verify(actor, operator, totp(secret)).device == device
    call_command("otp_rekey")
    assert "0 re-encrypted, 1 already current" in capsys.readouterr().out


def json_of(event) -> str:
    return json.dumps([event.message, event.detail])


def test_a_key_sealed_under_a_forgotten_secret_key_is_refused_clearly_and_otp_rekey_names_the_user(
    settings, client, capsys, operator, enrolled_under_old_key
):
    from django.core.management import call_command

    from opsapp.models import AuditEvent, AuthenticatorDevice
    from tests.two_factor_support import totp

    secret, codes = enrolled_under_old_key
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = NEW_KEY, []  # OLD_KEY lost
    sealed_before = AuthenticatorDevice.objects.get(user=operator).sealed_key
    client.force_login(operator)
    response = client.post("/admin/2fa/verify/", {"token": totp(secret)})
    assert response.status_code == 200 and "Ask a superuser to reset" in response.content.decode()
    event = AuditEvent.objects.filter(action="otp_token_rejected").get()
    assert event.outcome == "refused" and "no configured SECRET_KEY" in event.message
    response = client.post("/admin/2fa/verify/", {"token": codes[1]})
    assert response.status_code == 200 and "not valid" in response.content.decode()
    assert client.get("/admin/").status_code == 302

    with pytest.raises(CommandError, match="otp_reset"):
        call_command("otp_rekey")
    out = capsys.readouterr().out
    assert "no longer work" in out and "olga" in out
    assert AuthenticatorDevice.objects.get(user=operator).sealed_key == sealed_before
    assert AuditEvent.objects.get(action="otp_rekeyed").detail["unreadable"] == ["olga"]


def test_backup_codes_are_stored_as_keyed_hashes_and_work_once(operator, capsys):
    import hashlib

    from django.core.management import call_command

    from opsapp.models import BackupCode, BackupCodeDevice
    from opsapp.services import two_factor
    from opsapp.services.actors import Actor

    call_command("otp_enroll", "olga", "--json")
    codes = json.loads(capsys.readouterr().out)["backup_codes"]
    digests = set(BackupCode.objects.values_list("digest", flat=True))
    plain = {c.replace("-", "") for c in codes}
    assert len(digests) == 10 and not digests & plain
    # Keyed: not a bare SHA-256 someone could brute-force from a copy of the table.
    assert not digests & {hashlib.sha256(c.encode()).hexdigest() for c in plain}
    actor = Actor.from_user(operator)
    assert two_factor.verify(actor, operator, codes[3]).backup_codes_left == 9
    with pytest.raises(two_factor.TwoFactorError):
        two_factor.verify(actor, operator, codes[3])
    assert BackupCodeDevice.objects.get(user=operator).codes.count() == 9


# ------------------------------------------------------------------ sealing itself
def test_a_sealed_value_opens_only_for_its_purpose_and_refuses_tampering(settings):
    from opsapp.services import sealing

    sealed = sealing.seal(b"twenty bytes secret!", sealing.TOTP_KEY)
    assert b"twenty" not in sealed.encode() and sealing.unseal(sealed, sealing.TOTP_KEY) == b"twenty bytes secret!"
    with pytest.raises(sealing.SealError, match="SECRET_KEY_FALLBACKS"):
        sealing.unseal(sealed, sealing.ENROLLMENT)  # another derived key
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(sealing.SealError):
        sealing.unseal(tampered, sealing.TOTP_KEY)
    settings.SECRET_KEY = NEW_KEY
    with pytest.raises(sealing.SealError):
        sealing.unseal(sealed, sealing.TOTP_KEY)


def test_neither_device_model_has_an_admin_page():
    from django.contrib import admin

    from opsapp.models import AuthenticatorDevice, BackupCode, BackupCodeDevice

    assert not any(admin.site.is_registered(m) for m in (AuthenticatorDevice, BackupCodeDevice, BackupCode))
