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
