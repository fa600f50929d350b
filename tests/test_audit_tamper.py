"""The attacks of issue 12, each one reproduced, each one caught by the default cron verify.

A database-only attacker here is the table owner or a superuser: they switch
the append-only triggers off (`tamper`) and change history. They do not hold
the audit key (OPS_AUDIT_KEY) nor the checkpoint signing key, and cannot write
the published checkpoint directory.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from opsapp.models import AuditAction, AuditEvent
from opsapp.services.audit.chain import compute_hash, event_fields
from opsapp.services.audit.verify import EDITED, MISSING
from tests.test_audit import REPO_ROOT, TABLE, add_events, raw, tamper, verify_command

pytestmark = pytest.mark.django_db


def cron_verify() -> tuple[str, object]:
    """The documented cron line: verify, write a signed checkpoint, print the head."""
    return verify_command("--print-head")


def assert_caught(error, seq: int, problem: str) -> None:
    assert error is not None and error.returncode == 1, "the tampering went unnoticed"
    assert f"#{seq}" in str(error) and problem in str(error), str(error)


def test_owner_disables_triggers_and_cuts_the_tail():
    add_events(5)
    _, error = cron_verify()
    assert error is None
    tamper(f"DELETE FROM {TABLE} WHERE seq >= 3")
    out, error = cron_verify()
    assert_caught(error, 3, MISSING)
    assert out == ""  # no head of a broken chain for cron to store


def test_superuser_rewrites_an_event_and_rehashes_every_later_one():
    add_events(120)
    rows = list(AuditEvent.objects.order_by("seq"))
    prev = rows[98].hash
    raw(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
    for event in rows[99:]:
        fields = event_fields(event)
        fields["prev_hash"] = prev
        if event.seq == 100:
            fields["message"] = "nothing happened"
        prev = compute_hash(fields)
        raw(
            f"UPDATE {TABLE} SET message = %s, prev_hash = %s, hash = %s WHERE seq = %s",
            (fields["message"], fields["prev_hash"], prev, event.seq),
        )
    raw(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
    _, error = cron_verify()
    assert_caught(error, 100, EDITED)


def test_truncating_everything_is_an_error_not_zero_events_verified():
    add_events(3)
    assert cron_verify()[1] is None
    tamper(f"TRUNCATE {TABLE}")
    out, error = cron_verify()
    assert_caught(error, 1, MISSING)
    assert "0 events verified" not in str(error) and out == ""


def test_truncate_and_re_append_is_caught_by_the_checkpoint():
    add_events(3)
    assert cron_verify()[1] is None
    tamper(f"TRUNCATE {TABLE}")
    add_events(6)  # even through the application, with the real key
    _, error = cron_verify()
    assert_caught(error, 3, EDITED)


def test_a_forged_append_with_a_correct_hash_does_not_verify():
    add_events(3)
    last = AuditEvent.objects.order_by("-seq").first()
    fields = event_fields(last)
    fields.update(
        seq=last.seq + 1, action=AuditAction.ROLLBACK_SUCCEEDED, message="rollback succeeded", prev_hash=last.hash
    )
    AuditEvent.objects.create(**fields, hash=compute_hash(fields))
    _, error = cron_verify()
    assert_caught(error, 4, "")


def test_a_forged_append_that_copies_the_key_id_has_no_valid_mac():
    add_events(3)
    last = AuditEvent.objects.order_by("-seq").first()
    fields = event_fields(last)
    fields.update(seq=last.seq + 1, message="rollback succeeded", prev_hash=last.hash, key_id=last.key_id)
    AuditEvent.objects.create(**fields, hash=compute_hash(fields), mac="0" * 64)
    _, error = cron_verify()
    assert_caught(error, 4, EDITED)


def test_print_head_prints_nothing_on_a_broken_chain():
    add_events(4)
    tamper(f"UPDATE {TABLE} SET message = 'x' WHERE seq = 2")
    out, error = cron_verify()
    assert_caught(error, 2, EDITED)
    assert out == ""


SQLITE_SCRIPT = textwrap.dedent(
    """
    import django
    django.setup()
    from opsapp.models import AuditAction, AuditOutcome
    from opsapp.services.actors import Actor
    from opsapp.services.audit.log import append_event
    for i in range(3):
        append_event(action=AuditAction.STAMP, outcome=AuditOutcome.INFO, actor=Actor(username="olga"), message=f"e{i}")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["INSERT OR REPLACE", "REPLACE"])
def test_sqlite_replace_cannot_rewrite_an_event(verb, tmp_path):
    db = tmp_path / "console.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": f"sqlite:///{db}",
        "DEBUG": "1",
        "SECRET_KEY": "test-secret-key-for-sqlite",
        "OPS_IGNORE_DOTENV": "1",
        "OPS_VAR_DIR": str(tmp_path),
    }
    run = {"cwd": REPO_ROOT, "env": env, "capture_output": True, "text": True, "timeout": 120}
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], **run)
    assert migrate.returncode == 0, migrate.stderr
    seeded = subprocess.run([sys.executable, "-c", SQLITE_SCRIPT], **run)
    assert seeded.returncode == 0, seeded.stderr

    conn = sqlite3.connect(db)
    columns = [row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")]
    row = dict(zip(columns, conn.execute(f"SELECT * FROM {TABLE} WHERE seq = 2").fetchone(), strict=True))
    before = conn.execute(f"SELECT * FROM {TABLE} ORDER BY seq").fetchall()
    row["message"] = "rewritten"
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(f"{verb} INTO {TABLE} ({names}) VALUES ({marks})", list(row.values()))
    conn.rollback()
    assert conn.execute(f"SELECT * FROM {TABLE} ORDER BY seq").fetchall() == before
    conn.close()

    verify = subprocess.run([sys.executable, "manage.py", "verify_audit_log", "--json"], **run)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["ok"] is True


def _sqlite_console(tmp_path, db) -> dict:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": f"sqlite:///{db}",
        "DEBUG": "1",
        "SECRET_KEY": "test-secret-key-for-sqlite",
        "OPS_IGNORE_DOTENV": "1",
        "OPS_VAR_DIR": str(tmp_path),  # the checkpoints go to tmp_path/audit-checkpoints, shared by the copies
    }
    return {"cwd": REPO_ROOT, "env": env, "capture_output": True, "text": True, "timeout": 120}


SQLITE_ATTACKS = {
    # name: (SQL run with the triggers dropped, the seq cron's verify must name)
    "cut tail": (f"DELETE FROM {TABLE} WHERE seq >= 3", 3),
    "row edit": (f"UPDATE {TABLE} SET message = 'nothing happened' WHERE seq = 2", 2),
    "truncate": (f"DELETE FROM {TABLE}", 1),
    "forged append": (
        f"INSERT INTO {TABLE} (seq, created_at, actor, action, outcome, target_name, from_revision, to_revision, "
        "message, detail, user_agent, prev_hash, hash, key_id, mac) SELECT seq + 1, created_at, actor, "
        "'rollback_succeeded', outcome, target_name, '', '', 'rollback succeeded', '{}', '', hash, hash, key_id, mac "
        f"FROM {TABLE} WHERE seq = (SELECT MAX(seq) FROM {TABLE})",
        5,  # after the 3 events and the verification's own #4
    ),
}


@pytest.mark.slow
def test_sqlite_attacks_by_someone_with_the_database_file_are_caught(tmp_path):
    """On SQLite whoever can write the file can drop the triggers: the keyed chain and checkpoints still catch it."""
    import shutil

    pristine = tmp_path / "console.sqlite3"
    run = _sqlite_console(tmp_path, pristine)
    assert subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], **run).returncode == 0
    assert subprocess.run([sys.executable, "-c", SQLITE_SCRIPT], **run).returncode == 0
    verify = subprocess.run([sys.executable, "manage.py", "verify_audit_log", "--print-head"], **run)
    assert verify.returncode == 0, verify.stderr  # checkpoint of #3

    for name, (sql, seq) in SQLITE_ATTACKS.items():
        db = tmp_path / f"{name.replace(' ', '-')}.sqlite3"
        shutil.copy(pristine, db)
        conn = sqlite3.connect(db)
        triggers = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        assert triggers, "the append-only triggers are missing"
        for trigger in triggers:
            conn.execute(f'DROP TRIGGER "{trigger}"')
        conn.execute(sql)
        conn.commit()
        conn.close()
        cron = subprocess.run(
            [sys.executable, "manage.py", "verify_audit_log", "--print-head"], **_sqlite_console(tmp_path, db)
        )
        assert cron.returncode == 1, f"{name}: went unnoticed ({cron.stdout})"
        assert f"#{seq}" in cron.stderr and cron.stdout == "", f"{name}: {cron.stderr}"
