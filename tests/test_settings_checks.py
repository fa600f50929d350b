"""Settings and the opsapp.E0xx system checks, good and bad, with passwords masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import run_checks

from opsapp.targets import get_target, mask_url
from tests.conftest import REPO_ROOT


def _ids(errors) -> list[str]:
    return [e.id for e in errors]


def _check_errors() -> list:
    return [e for e in run_checks() if e.id and e.id.startswith("opsapp.")]


@pytest.fixture(autouse=True)
def mailed_codes(settings):
    """Codes go to a mail server: Django's test environment (DEBUG off, locmem) is what opsapp.E008 refuses."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


def test_it_masks_passwords_in_urls_and_free_text():
    assert mask_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert "s3cret" not in mask_url('connection to "postgresql://u:s3cret@h/db" failed; password=s3cret')
    assert mask_url("sqlite:///var/x.sqlite3") == "sqlite:///var/x.sqlite3"


def test_it_masks_the_whole_password_when_it_holds_an_at_sign_or_a_space():
    # make_url reads the password up to the LAST '@': "p@ss" and "p ss" are whole passwords.
    assert mask_url("postgresql://bob:p@ssw0rd@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("postgresql://bob:p ssw0rd@db/x") == "postgresql://bob:***@db/x"
    assert "ssw0rd" not in mask_url('could not connect: "postgresql://bob:p@ssw0rd@db/x"')


def test_the_default_demo_target_passes_every_check(settings):
    settings.OPS_TARGETS = {
        "shop": {
            "URL": "sqlite:///tmp/x.sqlite3",
            "ALEMBIC_INI": str(REPO_ROOT / "alembic.ini"),
            "ISOLATION_LEVEL": "SERIALIZABLE",
        }
    }
    assert _check_errors() == []
    assert get_target("shop").script_location == REPO_ROOT / "alembic"


def test_it_reports_a_target_without_a_url(settings):
    settings.OPS_TARGETS = {"billing": {"URL": "", "ALEMBIC_INI": str(REPO_ROOT / "alembic.ini")}}
    errors = _check_errors()
    assert "opsapp.E001" in _ids(errors)
    assert "OPS_TARGET_BILLING_URL" in next(e.msg for e in errors if e.id == "opsapp.E001")


def test_it_reports_a_malformed_url_with_the_password_masked(settings):
    settings.OPS_TARGETS = {
        "billing": {"URL": "mysql://u:hunter2@db/x", "ALEMBIC_INI": str(REPO_ROOT / "alembic.ini")},
        "other": {"URL": "postgresql://u:hunter2@db:notaport/x", "ALEMBIC_INI": str(REPO_ROOT / "alembic.ini")},
    }
    errors = [e for e in _check_errors() if e.id == "opsapp.E002"]
    assert len(errors) == 2
    assert all("hunter2" not in e.msg for e in errors)
    assert "unsupported database" in errors[0].msg


def test_it_reports_a_missing_alembic_ini_and_a_missing_script_directory(settings, tmp_path):
    ini_without_dir = tmp_path / "alembic.ini"
    ini_without_dir.write_text("[alembic]\nscript_location = %(here)s/nowhere\n")
    settings.OPS_TARGETS = {
        "a": {"URL": "sqlite:///x.db", "ALEMBIC_INI": str(tmp_path / "missing.ini")},
        "b": {"URL": "sqlite:///x.db", "ALEMBIC_INI": str(ini_without_dir)},
    }
    errors = _check_errors()
    assert ("opsapp.E003", "target a") in [(e.id, e.obj) for e in errors]
    assert ("opsapp.E004", "target b") in [(e.id, e.obj) for e in errors]


@pytest.mark.parametrize("level", ["READ UNCOMMITTED", "read_uncommitted", "CHAOS"])
def test_it_refuses_an_isolation_level_below_read_committed(settings, level):
    settings.OPS_TARGETS = {
        "shop": {"URL": "sqlite:///x.db", "ALEMBIC_INI": str(REPO_ROOT / "alembic.ini"), "ISOLATION_LEVEL": level}
    }
    assert "opsapp.E005" in _ids(_check_errors())


def test_it_accepts_read_committed(settings):
    settings.OPS_TARGETS = {
        "shop": {
            "URL": "sqlite:///x.db",
            "ALEMBIC_INI": str(REPO_ROOT / "alembic.ini"),
            "ISOLATION_LEVEL": "READ COMMITTED",
        }
    }
    assert _check_errors() == []


@pytest.mark.parametrize("backend", ["console", "filebased", "locmem", "dummy"])
def test_a_backend_that_keeps_codes_on_this_machine_is_an_error_only_with_debug_off(settings, backend):
    settings.EMAIL_BACKEND = f"django.core.mail.backends.{backend}.EmailBackend"
    settings.EMAIL_FILE_PATH = "/var/tmp/ops-codes"
    settings.DEBUG = False
    assert _ids(_check_errors()) == ["opsapp.E008"]
    settings.DEBUG = True
    assert _check_errors() == []


def _manage(args: list[str], env_extra: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPS_", "DATABASE_URL", "DJANGO_SETTINGS"))}
    env.update({"OPS_IGNORE_DOTENV": "1", **env_extra})
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "manage.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_refuses_to_start_without_a_secret_key_when_debug_is_off(tmp_path):
    result = _manage(["check"], {"DEBUG": "0", "OPS_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_manage_check_fails_with_the_check_id_for_a_bad_target(tmp_path):
    result = _manage(
        ["check"],
        {
            "DEBUG": "1",
            "OPS_VAR_DIR": str(tmp_path),
            "OPS_TARGETS": "shop,billing",
            "OPS_TARGET_BILLING_URL": "postgresql://u:topsecret@db:bad/x",
        },
    )
    assert result.returncode == 1
    assert "opsapp.E002" in result.stderr and "opsapp.E003" in result.stderr
    assert "topsecret" not in result.stderr + result.stdout


def test_the_embedded_default_checks_and_migrates_on_a_fresh_sqlite_file(tmp_path):
    env = {"DEBUG": "1", "OPS_VAR_DIR": str(tmp_path)}
    assert _manage(["check"], env).returncode == 0
    result = _manage(["migrate", "--noinput"], env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "console.sqlite3").stat().st_size > 0
    # The default target is the demo SQLite file under var/.
    from console import settings as base_settings  # noqa: F401  (import proves settings import cleanly)


# ------------------------------------------------------------ EMAIL_URL=filemail://
def test_filemail_with_three_slashes_writes_into_that_absolute_directory(tmp_path):
    outbox, elsewhere = tmp_path / "outbox", tmp_path / "cwd"
    elsewhere.mkdir()
    env = {"DEBUG": "1", "OPS_VAR_DIR": str(tmp_path / "var"), "EMAIL_URL": f"filemail://{outbox}"}
    assert env["EMAIL_URL"].startswith("filemail:///")

    result = _manage(["sendtestemail", "someone@example.com"], env, cwd=elsewhere)

    assert result.returncode == 0, result.stderr
    mails = list(outbox.iterdir())
    assert len(mails) == 1 and "To: someone@example.com" in mails[0].read_text()
    assert list(elsewhere.rglob("*")) == []  # nothing written relative to the working directory


def test_filemail_with_a_relative_path_is_refused_with_the_absolute_form_to_use(tmp_path):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {"DEBUG": "1", "OPS_VAR_DIR": str(tmp_path / "var"), "EMAIL_URL": "filemail://var/outbox"}

    result = _manage(["sendtestemail", "someone@example.com"], env, cwd=elsewhere)

    assert result.returncode == 1
    assert "opsapp.E009" in result.stderr and "filemail:///" in result.stderr
    assert list(elsewhere.rglob("*")) == []
