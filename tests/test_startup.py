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
