"""Two-factor secrets at rest: the console's database never holds one in clear.

Each test reads every table of the console DB as text (and every session,
decoded as Django decodes it) and looks for the TOTP secret, in hex, base32
and raw form, and for every backup code. Sessions are signed, not encrypted:
whatever a view puts in one is readable by anyone who reads the table.
"""

from __future__ import annotations

import base64
import re

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
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
    import json
    from urllib.parse import parse_qs, urlparse

    from django.core.management import call_command

    call_command("otp_enroll", "olga", "--json")
    out = json.loads(capsys.readouterr().out)
    secret = base64.b32decode(parse_qs(urlparse(out["uri"]).query)["secret"][0])
    text = database_text()
    assert [form for form in forms_of_secret(secret) if form in text] == []
    assert [code for code in out["backup_codes"] if any(form in text for form in forms_of_code(code))] == []


# ------------------------------------------------------------------ the data migration
def migration_0010():
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

    migration, apps = migration_0010()
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
    migration, apps = migration_0010()
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
