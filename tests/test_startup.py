"""Command start-up: loading the admin (autodiscover, URLconf) must not import Alembic or SQLAlchemy.

Every management command runs `django.setup()`, which autodiscovers the
admin; a module-level service import there made every cron command pay for
Alembic and SQLAlchemy before doing anything (issue 18 item 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
import django
django.setup()
import opsapp.admin, console.urls  # noqa: F401 - what autodiscover and the first request load
from django.urls import reverse
reverse("admin:opsapp_snapshot_changelist")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "sqlalchemy"))))
"""


def test_loading_the_admin_imports_neither_alembic_nor_sqlalchemy():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "console.settings_test", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# A cron command in a fresh process, then the heavy packages it imported (exit status kept).
CRON_PROBE = """
import json, sys
from django.core.management import execute_from_command_line
status = 0
try:
    execute_from_command_line(["manage.py", *sys.argv[1:]])
except SystemExit as exc:
    status = exc.code or 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"alembic", "sqlalchemy", "mako", "prometheus_client"})
print(json.dumps({"status": status, "heavy": heavy}))
"""


@pytest.fixture
def synced_target(script_dir_factory, pg_url, configure_target) -> str:
    from opsapp.services.catalog.sync import sync_target
    from tests.histories import run_alembic

    sd = script_dir_factory()
    sd.add("s1", None, message="one")
    sd.add("s2", "s1", message="two")
    name = configure_target("startup", pg_url, sd.ini)
    run_alembic(name, "upgrade", "heads")
    sync_target(name)
    return name


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "argv",
    [
        ["check_drift", "--target", "startup"],
        ["sync_revisions", "--target", "startup"],
        ["take_snapshot", "--target", "startup"],
        ["verify_snapshots"],
        ["prune_snapshots", "--keep", "14", "--older-than", "30"],
        ["verify_audit_log"],
        ["execute_rollback", "--reconcile"],
        ["check_cron"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_cron_command_imports_neither_alembic_nor_sqlalchemy_nor_the_metrics_client(
    argv, synced_target, settings, snapshot_dir
):
    from tests.operations_support import worker_env

    env = worker_env(settings, PYTHONPATH=str(REPO), OPS_AUDIT_CHECKPOINT_DIR=str(snapshot_dir / "checkpoints"))
    done = subprocess.run(
        [sys.executable, "-c", CRON_PROBE, *argv, "--verbosity", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # check_cron exits 1 here (jobs never run): what counts is that the command did its work.
    assert result["status"] in (0, 1), done.stderr
    assert result["heavy"] == []
