"""One backup code used from two places at once on the embedded SQLite console DB (the quick start).

On PostgreSQL the device row is locked (SELECT ... FOR UPDATE). SQLite has no row locks: two sign-ins
with one code both read it before either deletes it. The second one must be refused, as a refusal,
not a "database is locked" error. Real processes and a real SQLite file; the other sign-in is a
plain sqlite3 connection that has already deleted the code in a transaction not yet committed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT

VERIFY_SCRIPT = """
import django, json
django.setup()
from django.contrib.auth import get_user_model
from opsapp.services import two_factor
from opsapp.services.actors import Actor
user = get_user_model().objects.get(username="olga")
print("ready", flush=True)
try:
    two_factor.verify(Actor(username="olga"), user, {code!r})
except two_factor.TwoFactorError as exc:
    print(json.dumps({{"accepted": False, "reason": exc.reason}}))
else:
    print(json.dumps({{"accepted": True}}))
"""


def _console(tmp_path) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'console.sqlite3'}",
        "DEBUG": "1",
        "SECRET_KEY": "test-secret-key-for-sqlite-2fa",
        "OPS_IGNORE_DOTENV": "1",
        "OPS_VAR_DIR": str(tmp_path),
    }
    return {"cwd": REPO_ROOT, "env": env, "capture_output": True, "text": True, "timeout": 120}


@pytest.mark.slow
def test_a_backup_code_used_meanwhile_by_another_sign_in_is_refused_on_sqlite(tmp_path):
    run = _console(tmp_path)
    assert subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], **run).returncode == 0
    create = (
        "from django.contrib.auth import get_user_model; get_user_model().objects.create_user('olga', is_staff=True)"
    )
    assert subprocess.run([sys.executable, "manage.py", "shell", "-c", create], **run).returncode == 0
    enrolled = subprocess.run([sys.executable, "manage.py", "otp_enroll", "olga", "--json"], **run)
    assert enrolled.returncode == 0, enrolled.stderr
    code = json.loads(enrolled.stdout)["backup_codes"][0]

    # The other sign-in, mid-transaction: it has matched the code and deleted it, not yet committed.
    other = sqlite3.connect(tmp_path / "console.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("DELETE FROM opsapp_backupcode")
    ours = subprocess.Popen(
        [sys.executable, "-c", VERIFY_SCRIPT.format(code=code)],
        cwd=run["cwd"],
        env=run["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert ours.stdout.readline().strip() == "ready"
    # Give our sign-in the chance to read the code before the other commits. Whatever the timing, the
    # right answer is the same: refused. (The old code read it here and then failed on the delete.)
    time.sleep(1.0)
    other.execute("COMMIT")
    other.close()
    out, err = ours.communicate(timeout=60)
    assert ours.returncode == 0, err
    assert json.loads(out) == {"accepted": False, "reason": "token"}
    left = sqlite3.connect(tmp_path / "console.sqlite3").execute("SELECT count(*) FROM opsapp_backupcode").fetchone()
    assert left == (0,)
