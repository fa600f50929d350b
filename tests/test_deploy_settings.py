"""Production hardening: `check --deploy` is clean, sessions are short, logins are throttled,
the environment banner shows, and no page shows a target password."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from django.urls import reverse

from tests.conftest import REPO_ROOT, ScriptDir

pytestmark = pytest.mark.django_db


def audit_key_files(directory) -> dict[str, str]:
    """A production host's audit keys, as `audit_keys --generate` writes them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(exist_ok=True)
    mac, signing = directory / "audit-mac.key", directory / "audit-signing.pem"
    if not mac.exists():
        mac.write_text(secrets.token_urlsafe(48))
        signing.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return {"OPS_AUDIT_KEY_FILE": str(mac), "OPS_AUDIT_SIGNING_KEY_FILE": str(signing)}


def production_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a production process: DEBUG off, real secret, one host, a valid target, audit keys."""
    scripts = ScriptDir(tmp_path / "prod-scripts")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPS_", "DJANGO_", "SECURE_", "SESSION_", "CSRF_", "AXES_", "USE_X_"))
        and key not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "EMAIL_URL")
    }
    env.update(
        {
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(60),
            "ALLOWED_HOSTS": "ops.example.com",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
            "OPS_IGNORE_DOTENV": "1",
            "OPS_VAR_DIR": str(tmp_path / "var"),
            "OPS_TARGET_SHOP_URL": "postgresql://migrator:s3cret-pw@db.internal:5432/shop",
            "OPS_TARGET_SHOP_ALEMBIC_INI": str(scripts.ini),
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "EMAIL_URL": "smtp+tls://mailer:mail-pw@smtp.example.com:587",
            **audit_key_files(tmp_path / "audit-keys"),
        }
    )
    env.update(extra)
    return env


def run_manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def production_setting_values(env: dict[str, str], *names: str) -> dict:
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {list(names)!r}}}, default=str))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_check_deploy_reports_nothing_under_production_settings(tmp_path):
    proc = run_manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues" in proc.stdout


# ------------------------------------------------- codes must leave the machine (two-person rule)
@pytest.mark.parametrize(
    "email_url", [None, "consolemail://", "filemail:///var/tmp/ops-codes", "memorymail://", "dummymail://"]
)
def test_with_debug_off_a_backend_that_keeps_codes_on_this_machine_stops_the_console(tmp_path, email_url):
    env = production_env(tmp_path)
    if email_url is None:
        del env["EMAIL_URL"]  # the default prints codes: that must not pass silently either
    else:
        env["EMAIL_URL"] = email_url

    proc = run_manage(env, "check")

    assert proc.returncode == 1
    assert "opsapp.E008" in proc.stderr and "two-person rule" in proc.stderr
    assert "s3cret-pw" not in proc.stdout + proc.stderr


def test_check_deploy_still_warns_about_printed_codes_in_a_development_checkout(tmp_path):
    proc = run_manage(
        production_env(tmp_path, DEBUG="1", EMAIL_URL="consolemail://"), "check", "--deploy", "--fail-level", "WARNING"
    )
    assert proc.returncode == 1
    assert "opsapp.W001" in proc.stderr and "opsapp.E008" not in proc.stderr


def test_the_wsgi_application_refuses_to_load_with_debug_off_and_codes_printed(tmp_path):
    # gunicorn runs no system checks: console/wsgi.py must refuse by itself.
    load = [sys.executable, "-c", "import console.wsgi"]
    env = production_env(tmp_path)
    mailed = subprocess.run(load, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert mailed.returncode == 0, mailed.stderr
    env["EMAIL_URL"] = "consolemail://"
    printed = subprocess.run(load, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode != 0
    assert "opsapp.E008" in printed.stderr


def quick_start_env(var_dir, **extra: str) -> dict[str, str]:
    """The quick start's embedded default (SQLite console DB and demo target under var_dir), no .env."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPS_", "DJANGO_")) and key not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "EMAIL_URL")
    }
    env.update({"OPS_IGNORE_DOTENV": "1", "OPS_VAR_DIR": str(var_dir), "LOG_LEVEL": "WARNING", **extra})
    return env


@pytest.mark.slow
def test_one_person_cannot_request_and_execute_a_downgrade_with_debug_off_and_codes_printed(tmp_path):
    import sqlite3

    development = quick_start_env(tmp_path, DEBUG="1")
    # DEBUG off, a real key, EMAIL_URL unset: the default would print the approver's code right here.
    production = quick_start_env(tmp_path, DEBUG="0", SECRET_KEY=secrets.token_urlsafe(60))
    for step in (["migrate", "--noinput"], ["seed_demo"], ["bootstrap_console"], ["take_snapshot", "--target", "shop"]):
        assert run_manage(development, *step).returncode == 0, step

    def requests_and_heads() -> tuple[list, list]:
        with (
            sqlite3.connect(tmp_path / "console.sqlite3") as console,
            sqlite3.connect(tmp_path / "shop.sqlite3") as shop,
        ):
            return (
                console.execute("SELECT id, status FROM opsapp_rollbackrequest").fetchall(),
                shop.execute("SELECT version_num FROM alembic_version").fetchall(),
            )

    before = requests_and_heads()
    request = ["request_rollback", "--target", "shop", "--to", "-1", "--reason", "solo", "--actor", "admin"]
    refused = run_manage(production, *request, "--snapshot", "1")
    assert refused.returncode == 1
    assert "opsapp.E008" in refused.stderr
    assert "Code:" not in refused.stdout + refused.stderr
    assert requests_and_heads() == before == ([], [("c8a1d5f3b7ad",)])

    # A request made in the development demo (codes printed, DEBUG=1) cannot be executed by a production process.
    demo = run_manage(development, *request, "--snapshot", "1", "--json")
    assert demo.returncode == 0, demo.stderr
    code = next(line.split()[1] for line in demo.stderr.splitlines() if line.startswith("Code: "))
    request_id = json.loads(demo.stdout)["id"]
    executed = subprocess.run(
        [sys.executable, "manage.py", "execute_rollback", str(request_id), "--code", "-", "--actor", "admin"],
        cwd=REPO_ROOT,
        env=production,
        input=code + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert executed.returncode == 1
    assert "opsapp.E008" in executed.stderr
    assert requests_and_heads() == ([(request_id, "pending")], [("c8a1d5f3b7ad",)])


def test_production_settings_are_hardened_and_sessions_last_at_most_twelve_hours(tmp_path):
    values = production_setting_values(
        production_env(tmp_path, SESSION_COOKIE_AGE=str(7 * 24 * 3600)),
        "SESSION_COOKIE_AGE",
        "SESSION_COOKIE_SECURE",
        "SESSION_COOKIE_HTTPONLY",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
        "X_FRAME_OPTIONS",
        "DEBUG",
        "SECURE_PROXY_SSL_HEADER",
    )
    assert values["SESSION_COOKIE_AGE"] <= 12 * 3600
    assert values["SESSION_COOKIE_SECURE"] and values["SESSION_COOKIE_HTTPONLY"] and values["CSRF_COOKIE_SECURE"]
    assert values["SECURE_SSL_REDIRECT"] and values["SECURE_HSTS_SECONDS"] >= 31536000
    assert values["X_FRAME_OPTIONS"] == "DENY"
    assert values["DEBUG"] is False
    assert values["SECURE_PROXY_SSL_HEADER"] is None


def test_the_proxy_header_and_client_ip_headers_are_configurable_by_environment(tmp_path):
    env = production_env(tmp_path, USE_X_FORWARDED_PROTO="1", OPS_CLIENT_IP_HEADERS="HTTP_X_REAL_IP,REMOTE_ADDR")
    values = production_setting_values(
        env, "SECURE_PROXY_SSL_HEADER", "OPS_CLIENT_IP_HEADERS", "AXES_CLIENT_IP_CALLABLE"
    )
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["OPS_CLIENT_IP_HEADERS"] == ["HTTP_X_REAL_IP", "REMOTE_ADDR"]
    assert values["AXES_CLIENT_IP_CALLABLE"] == "opsapp.services.actors.client_ip"


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    proc = run_manage(env, "check")
    assert proc.returncode != 0
    assert "SECRET_KEY is not set" in proc.stderr


# ------------------------------------------------------------------ login throttling
def _login(client, username: str, password: str, ip: str = "203.0.113.7", **headers):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=ip,
        **headers,
    )


def test_it_locks_out_admin_login_after_the_failure_limit(client, settings, operator):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(3):
        response = _login(client, "olga", "wrong-password")
        assert response.status_code in (200, 429)
        assert "_auth_user_id" not in client.session
    # Even the right password is refused now: the guesser cannot tell.
    response = _login(client, "olga", "pw-olga")
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_throttling_counts_the_real_client_behind_the_proxy_not_the_proxy(client, settings, operator):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 3
    settings.OPS_CLIENT_IP_HEADERS = ["HTTP_X_REAL_IP", "REMOTE_ADDR"]
    proxy = "10.0.0.1"
    for _ in range(3):
        _login(client, "olga", "wrong-password", ip=proxy, HTTP_X_REAL_IP="198.51.100.66")
    assert _login(client, "olga", "pw-olga", ip=proxy, HTTP_X_REAL_IP="198.51.100.66").status_code == 429

    from axes.models import AccessAttempt

    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"198.51.100.66"}
    # Another client behind the same proxy logs in normally.
    response = _login(client, "olga", "pw-olga", ip=proxy, HTTP_X_REAL_IP="198.51.100.77")
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(operator.pk)


# ------------------------------------------------------------------ environment banner
def test_the_environment_name_shows_in_a_banner_on_every_admin_page(client, settings, admin_user):
    settings.OPS_ENVIRONMENT_NAME = "PRODUCTION"
    settings.OPS_ENVIRONMENT_COLOUR = ""
    login_page = client.get(reverse("admin:login")).content.decode()
    assert 'id="ops-environment-banner"' in login_page and "PRODUCTION" in login_page
    client.force_login(admin_user)
    for url in (reverse("admin:index"), reverse("admin:opsapp_rollbackrequest_changelist")):
        page = client.get(url).content.decode()
        assert 'id="ops-environment-banner"' in page
        assert "background: #b00020" in page  # production is red
        assert "Migration operations console" in page


def test_no_banner_when_no_environment_name_is_set(client, settings, admin_user):
    settings.OPS_ENVIRONMENT_NAME = ""
    client.force_login(admin_user)
    page = client.get(reverse("admin:index")).content.decode()
    assert 'id="ops-environment-banner"' not in page
    assert "Migration operations console" in page


# ------------------------------------------------------------------ secrets never shown
def test_no_page_audit_event_or_log_line_shows_a_target_password_or_a_verification_code(
    client, caplog, pg_url, branchy_scripts, configure_target, operator, approver, admin_user
):
    from opsapp.models import AuditEvent
    from tests.admin_fixtures import build_world, codes_in_outbox
    from tests.test_permissions import MATRIX, object_ids, resolve

    caplog.set_level("INFO")
    password = "Sup3r-S3cret-Pw"
    # Trust auth ignores the password, so the target works with it in its URL.
    secret_url = pg_url.replace("postgres@", f"postgres:{password}@", 1)
    assert password in secret_url
    world = build_world(
        pg_url=secret_url, scripts=branchy_scripts, configure_target=configure_target, requester=operator
    )
    client.force_login(operator)
    first_code = codes_in_outbox()[-1]
    client.post(
        reverse("admin:opsapp_rollbackrequest_execute", args=[world.request.pk]),
        {"code": "12345678", "confirmed": "yes"},
    )
    client.post(reverse("admin:opsapp_rollbackrequest_reissue", args=[world.request.pk]))
    codes = codes_in_outbox()
    assert len(codes) == 2 and first_code in codes
    queued = client.post(
        reverse("admin:opsapp_rollbackrequest_execute", args=[world.request.pk]),
        {"code": codes[-1], "confirmed": "yes"},
    )
    from tests.operations_support import run_queued_jobs

    assert run_queued_jobs() == 1
    world.request.refresh_from_db()
    assert world.request.status == "succeeded"

    client.force_login(admin_user)
    ids = object_ids(world)
    pages = [resolve(case, ids) for case in MATRIX if case.method == "GET" and "admin" in case.allowed]
    pages += [reverse("admin:opsapp_rollbackrequest_execute", args=[world.request.pk]), queued.url]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, path
        body = b"".join(response.streaming_content) if response.streaming else response.content
        text = body.decode()
        assert password not in text, path
        for code in codes:
            assert code not in text, path

    events = list(AuditEvent.objects.values())
    assert events
    for event in events:
        flat = json.dumps(event, default=str)
        assert password not in flat
        for code in codes:
            assert code not in flat
    for code in codes:
        assert code not in caplog.text
    assert password not in caplog.text
