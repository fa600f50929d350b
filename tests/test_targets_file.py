"""OPS_TARGETS_FILE: targets from TOML, tags, env + file together, and line-accurate system checks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from django.core.checks import run_checks

from opsapp.services.catalog.sync import ensure_target_row
from opsapp.targets import get_target
from opsapp.targets_file import load_targets_file
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.django_db

GOOD = """\
# fleet
[[target]]
name = "eu_shop"
url_env = "OPS_FLEET_TEST_EU_URL"
alembic_ini = "{ini}"
isolation_level = "REPEATABLE READ"
tags = {{ region = "eu", tier = "prod" }}

[[target]]
name = "us_shop"
url = "sqlite:////tmp/us.sqlite3"
alembic_ini = "{ini}"
"""


def write(tmp_path, text: str):
    path = tmp_path / "targets.toml"
    path.write_text(textwrap.dedent(text))
    return path


def opsapp_errors() -> list:
    """opsapp.* errors, without E007 ("no target at all"), which a file whose only target is bad also gets."""
    return [e for e in run_checks() if e.id and e.id.startswith("opsapp.") and e.id != "opsapp.E007"]


@pytest.fixture(autouse=True)
def mailed_codes(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


def use_file(settings, path, environ: dict[str, str], env_targets: dict | None = None) -> None:
    """What console/settings.py does at start-up, for this test."""
    settings.OPS_TARGETS_FILE = str(path)
    settings.OPS_ENV_TARGET_NAMES = tuple(env_targets or {})
    targets = dict(env_targets or {})
    for name, raw in load_targets_file(path, environ).targets.items():
        targets.setdefault(name, raw)
    settings.OPS_TARGETS = targets


def test_it_reads_targets_with_url_env_and_tags(tmp_path, settings, monkeypatch):
    monkeypatch.setenv("OPS_FLEET_TEST_EU_URL", "postgresql://bob:s3cret@db.example/eu")
    path = write(tmp_path, GOOD.format(ini=REPO_ROOT / "alembic.ini"))
    use_file(settings, path, os.environ)

    assert opsapp_errors() == []
    eu = get_target("eu_shop")
    assert eu.url == "postgresql://bob:s3cret@db.example/eu"
    assert eu.isolation_level == "REPEATABLE READ"
    assert eu.tags == {"region": "eu", "tier": "prod"}
    assert get_target("us_shop").isolation_level == "SERIALIZABLE"
    # Stored on the Target row, visible to the matrix; the password is not.
    row = ensure_target_row("eu_shop")
    row.refresh_from_db()
    assert row.tags == {"region": "eu", "tier": "prod"}
    assert "s3cret" not in row.url_masked


def test_a_relative_alembic_ini_is_relative_to_the_file(tmp_path, settings):
    (tmp_path / "app").mkdir()
    ini = tmp_path / "app" / "alembic.ini"
    ini.write_text((REPO_ROOT / "alembic.ini").read_text().replace("%(here)s/alembic", str(REPO_ROOT / "alembic")))
    path = write(
        tmp_path, '[[target]]\nname = "t1"\nurl = "sqlite:////tmp/t1.sqlite3"\nalembic_ini = "app/alembic.ini"\n'
    )
    loaded = load_targets_file(path, {})
    assert loaded.problems == []
    assert loaded.targets["t1"]["ALEMBIC_INI"] == str(ini)


def test_a_syntax_error_names_its_line(tmp_path, settings):
    path = write(tmp_path, '[[target]]\nname = "a"\nurl_env = "X"\nalembic_ini = \n')
    use_file(settings, path, {})
    errors = opsapp_errors()
    assert [e.id for e in errors] == ["opsapp.E081"]
    assert "line 4" in errors[0].msg
    assert str(path) in errors[0].msg


@pytest.mark.parametrize(
    ("body", "check_id", "line", "words"),
    [
        (
            'name = "a"\nurl = "sqlite:////tmp/a.db"\nalembic_ini = "{ini}"\ncolour = "red"\n',
            "E082",
            6,
            "unknown key 'colour'",
        ),
        ('url = "sqlite:////tmp/a.db"\nalembic_ini = "{ini}"\n', "E083", 2, "has no name"),
        ('name = "a"\nalembic_ini = "{ini}"\n', "E084", 2, "has no url_env"),
        ('name = "a"\nalembic_ini = "{ini}"\nurl_env = "OPS_FLEET_TEST_UNSET"\n', "E084", 5, "OPS_FLEET_TEST_UNSET"),
        ('name = "a"\nurl = "postgresql://u:pw@h/db"\nurl_env = "X"\nalembic_ini = "{ini}"\n', "E084", 5, "not both"),
        ('name = "a"\nalembic_ini = "{ini}"\nurl = "postgresql://u:hunter2@h/db"\n', "E084", 5, "holds a password"),
        (
            'name = "a"\nurl = "sqlite:////tmp/a.db"\nalembic_ini = "{ini}"\ntags = {{ 1x = "eu" }}\n',
            "E086",
            6,
            "tag '1x'",
        ),
    ],
)
def test_a_semantic_error_names_the_line_of_the_offending_key(tmp_path, settings, body, check_id, line, words):
    path = write(tmp_path, "# fleet\n[[target]]\n" + body.format(ini=REPO_ROOT / "alembic.ini"))
    use_file(settings, path, {})
    errors = opsapp_errors()
    assert [e.id for e in errors] == [f"opsapp.{check_id}"], errors
    assert f"{path}, line {line}:" in errors[0].msg
    assert words in errors[0].msg
    assert "hunter2" not in errors[0].msg and "pw@" not in errors[0].msg
    assert "a" not in settings.OPS_TARGETS  # a target with a structural problem is left out


def test_a_target_declared_twice_in_the_file_names_both_lines(tmp_path, settings):
    ini = REPO_ROOT / "alembic.ini"
    one = f'[[target]]\nname = "a"\nurl = "sqlite:////tmp/a.db"\nalembic_ini = "{ini}"\n\n'
    path = write(tmp_path, one + one)
    use_file(settings, path, {})
    errors = opsapp_errors()
    assert [e.id for e in errors] == ["opsapp.E083"]
    assert f"{path}, line 7:" in errors[0].msg and "first at line 1" in errors[0].msg


def test_bad_values_of_a_file_target_are_reported_at_their_key(tmp_path, settings):
    path = write(
        tmp_path,
        '[[target]]\nname = "ok"\nurl = "sqlite:////tmp/ok.db"\nalembic_ini = "/nowhere/alembic.ini"\n'
        'isolation_level = "READ UNCOMMITTED"\n',
    )
    use_file(settings, path, {})
    errors = {e.id: e.msg for e in opsapp_errors()}
    assert set(errors) == {"opsapp.E003", "opsapp.E005"}
    assert f"({path}, line 4)" in errors["opsapp.E003"]
    assert f"({path}, line 5)" in errors["opsapp.E005"]


def test_a_target_in_both_the_file_and_the_environment_is_an_error(tmp_path, settings):
    ini = REPO_ROOT / "alembic.ini"
    path = write(tmp_path, f'\n[[target]]\nname = "shop"\nurl = "sqlite:////tmp/a.db"\nalembic_ini = "{ini}"\n')
    env_shop = {"URL": "sqlite:////tmp/env.db", "ALEMBIC_INI": str(ini), "ISOLATION_LEVEL": "SERIALIZABLE"}
    use_file(settings, path, {}, env_targets={"shop": env_shop})
    errors = opsapp_errors()
    assert [e.id for e in errors] == ["opsapp.E085"]
    assert f"{path}, line 2:" in errors[0].msg and "OPS_TARGET_SHOP_" in errors[0].msg
    # Meanwhile the environment's definition is the one in use.
    assert get_target("shop").url == "sqlite:////tmp/env.db"


def test_an_unreadable_file_is_an_error(tmp_path, settings):
    use_file(settings, tmp_path / "missing.toml", {})
    assert [e.id for e in opsapp_errors()] == ["opsapp.E080"]
    assert "opsapp.E007" in [e.id for e in run_checks()]


def run_manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPS_TARGET")}
    base.update({"DEBUG": "1", "OPS_IGNORE_DOTENV": "1", **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def test_settings_merge_file_and_environment_targets(tmp_path):
    """The real start-up path: env targets plus file targets, and `manage.py check` with a bad file."""
    ini = REPO_ROOT / "alembic.ini"
    path = write(
        tmp_path,
        f'[[target]]\nname = "eu"\nurl_env = "OPS_FLEET_TEST_EU_URL"\nalembic_ini = "{ini}"\ntags = {{ region = "eu" }}\n',
    )
    env = {
        "OPS_TARGETS_FILE": str(path),
        "OPS_TARGETS": "legacy",
        "OPS_TARGET_LEGACY_URL": "sqlite:////tmp/legacy.db",
        "OPS_TARGET_LEGACY_ALEMBIC_INI": str(ini),
        "OPS_FLEET_TEST_EU_URL": "sqlite:////tmp/eu.db",
    }
    shell = run_manage(
        env,
        "shell",
        "-c",
        "from django.conf import settings; print(sorted(settings.OPS_TARGETS), settings.OPS_TARGETS['eu']['TAGS'])",
    )
    assert shell.returncode == 0, shell.stderr
    assert "['eu', 'legacy'] {'region': 'eu'}" in shell.stdout
    path.write_text(path.read_text() + '\n[[target]]\nname = "legacy"\nurl = "sqlite:////tmp/x.db"\n')
    check = run_manage(env, "check")
    assert check.returncode == 1
    assert "opsapp.E085" in check.stderr and f"{path}, line 7" in check.stderr
