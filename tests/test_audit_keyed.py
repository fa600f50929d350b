"""The keyed chain, its keys, the signed checkpoints and their system checks (issue 12)."""

from __future__ import annotations

import json
import os
import stat
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from opsapp.checks import check_audit_keys, check_audit_keys_deploy
from opsapp.models import AuditAction, AuditEvent
from opsapp.services.audit.chain import (
    GENESIS_HASH,
    batches,
    canonical_payload,
    compute_hash,
    event_fields,
    row_payload,
)
from opsapp.services.audit.keys import current_mac_key, key_id_of
from opsapp.services.audit.verify import CHECKPOINT, EDITED, REORDERED, UNKEYED, verify_chain
from tests.test_audit import TABLE, add_events, raw, verify_command

KEY_A = "first-audit-key-0123456789-abcdefghijklmnop"
KEY_B = "second-audit-key-0123456789-abcdefghijklmno"


def plain_events(n: int) -> None:
    """Events as the console wrote them before it had a key (plain SHA-256, no MAC)."""
    prev, seq = GENESIS_HASH, 0
    last = AuditEvent.objects.order_by("-seq").first()
    if last:
        prev, seq = last.hash, last.seq
    for i in range(n):
        fields = {
            "seq": seq + i + 1,
            "created_at": "2026-01-01T00:00:00.000000+00:00",
            "actor_user_id": None,
            "actor": "cron",
            "action": "stamp",
            "outcome": "info",
            "target_name": "shop",
            "request_id": None,
            "snapshot_id": None,
            "from_revision": "",
            "to_revision": "",
            "message": f"old event {i}",
            "detail": {"i": i},
            "client_ip": None,
            "user_agent": "",
            "prev_hash": prev,
        }
        prev = compute_hash(fields)
        AuditEvent.objects.create(**fields, hash=prev)


@pytest.mark.django_db
def test_every_event_carries_the_key_id_and_a_mac_only_the_key_can_make():
    events = add_events(3)
    key = current_mac_key()
    assert {e.key_id for e in events} == {key.key_id} and key.key_id == key_id_of(key.secret)
    assert all(len(e.mac) == 64 and e.mac != e.hash for e in events)
    assert verify_chain().ok
    # Another key does not verify them: the MAC depends on the key.
    result = verify_chain(keys={key.key_id: b"some-other-key-of-enough-length-000"})
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 1, EDITED)


@pytest.mark.django_db
def test_the_row_payload_is_byte_for_byte_the_canonical_serialization():
    add_events(2)
    plain_events(1)  # an unkeyed row is serialized without key_id
    from opsapp.services.actors import Actor
    from opsapp.services.audit.log import append_event

    append_event(
        action=AuditAction.STAMP,
        outcome="info",
        actor=Actor(username='o"l\\ga ünï', client_ip="2001:db8::1"),
        message='tab\there "quoted" \u2028 line\nsep \U0001f600',
        detail={"z": [1, 2.5, None, True], "a": {"ü": "ß"}, "": ""},
    )
    rows = [row for batch in batches(0, 100) for row in batch]
    assert len(rows) == 5
    for row, event in zip(rows, AuditEvent.objects.order_by("seq"), strict=True):
        assert row_payload(row) == canonical_payload(event_fields(event))


@pytest.mark.django_db
def test_old_plain_events_stay_verifiable_and_the_switch_to_macs_is_an_audited_event():
    plain_events(3)
    assert verify_chain().ok
    (event,) = add_events(1)
    switch = AuditEvent.objects.get(seq=4)
    assert switch.action == AuditAction.AUDIT_KEY_CHANGED and switch.key_id == current_mac_key().key_id
    assert switch.detail == {"key_id": switch.key_id, "previous_key_id": None}
    assert switch.prev_hash == AuditEvent.objects.get(seq=3).hash and event.seq == 5
    assert verify_chain().ok

    # Rewriting an old event and rehashing the old chain breaks the link into the keyed events.
    raw(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
    prev = AuditEvent.objects.get(seq=1).hash
    for old in AuditEvent.objects.filter(seq__in=[2, 3]).order_by("seq"):
        fields = event_fields(old)
        fields.update(prev_hash=prev, message="rewritten" if old.seq == 2 else old.message)
        prev = compute_hash(fields)
        raw(
            f"UPDATE {TABLE} SET message = %s, prev_hash = %s, hash = %s WHERE seq = %s",
            (fields["message"], fields["prev_hash"], prev, old.seq),
        )
    raw(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
    result = verify_chain()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 4, REORDERED)


@pytest.mark.django_db
def test_an_unkeyed_event_after_keyed_ones_is_refused_even_with_a_correct_hash():
    add_events(2)
    plain_events(1)
    result = verify_chain()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 3, UNKEYED)


@pytest.mark.django_db
def test_a_rotated_key_verifies_old_events_with_the_retired_key(settings, tmp_path):
    settings.OPS_AUDIT_KEY = KEY_A
    add_events(2)
    settings.OPS_AUDIT_KEY = KEY_B
    add_events(1)
    change = AuditEvent.objects.get(seq=3)
    assert change.action == AuditAction.AUDIT_KEY_CHANGED
    assert change.detail == {"key_id": key_id_of(KEY_B.encode()), "previous_key_id": key_id_of(KEY_A.encode())}

    result = verify_chain()  # the retired key is not configured
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 1, UNKEYED)
    assert key_id_of(KEY_A.encode()) in result.message and KEY_A not in result.message

    retired = tmp_path / "previous-keys"
    retired.write_text(KEY_A + "\n")
    settings.OPS_AUDIT_PREVIOUS_KEYS_FILE = str(retired)
    assert verify_chain().ok


@pytest.mark.django_db
def test_the_key_is_never_in_the_database_nor_in_a_checkpoint(settings):
    settings.OPS_AUDIT_KEY = KEY_A
    add_events(2)
    assert verify_command()[1] is None
    dump = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert KEY_A not in dump
    for path in settings.OPS_AUDIT_CHECKPOINT_DIR.iterdir():
        assert KEY_A not in path.read_text()


@pytest.mark.django_db
def test_each_verify_writes_a_signed_read_only_checkpoint_of_the_head(settings):
    events = add_events(3)
    out, error = verify_command("--print-head")
    assert error is None and out.strip() == f"3 {events[-1].hash}"
    (path,) = settings.OPS_AUDIT_CHECKPOINT_DIR.iterdir()
    document = json.loads(path.read_text())
    body = document["checkpoint"]
    assert (body["seq"], body["hash"], body["mac"], body["count"]) == (3, events[-1].hash, events[-1].mac, 3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    # The next run checks it, then adds its own.
    out, error = verify_command("--json")
    assert error is None and json.loads(out)["checkpoints_checked"] == 1
    assert len(list(settings.OPS_AUDIT_CHECKPOINT_DIR.iterdir())) == 2
    # --no-checkpoint checks without writing.
    assert verify_command("--no-checkpoint")[1] is None
    assert len(list(settings.OPS_AUDIT_CHECKPOINT_DIR.iterdir())) == 2


@pytest.mark.django_db
def test_with_checkpoint_mail_each_new_checkpoint_goes_to_the_auditors(settings, mailoutbox, auditor, operator):
    from opsapp.services.audit.keys import public_key
    from opsapp.services.audit.offline import check_checkpoint

    settings.OPS_AUDIT_CHECKPOINT_MAIL = True
    add_events(2)
    out, error = verify_command("--json")
    assert error is None and "mailed to 1 auditor(s)" in json.loads(out)["message"]
    (path,) = settings.OPS_AUDIT_CHECKPOINT_DIR.iterdir()
    (message,) = mailoutbox
    assert message.to == [auditor.email] and "#2" in message.subject  # the operator gets no copy
    ((name, content, mimetype),) = message.attachments
    assert name == path.name and content == path.read_bytes() and mimetype == "application/json"
    assert check_checkpoint(json.loads(content), public_key(), name)["seq"] == 2


@pytest.mark.django_db
def test_a_checkpoint_that_cannot_be_mailed_fails_the_run_and_is_recorded(settings, mailoutbox, auditor):
    settings.OPS_AUDIT_CHECKPOINT_MAIL = True
    auditor.email = ""
    auditor.save()
    add_events(1)
    out, error = verify_command("--print-head")
    assert error is not None and error.returncode == 1 and out == ""
    assert "not mailed" in str(error) and "auditors group" in str(error)
    assert mailoutbox == []
    recorded = AuditEvent.objects.order_by("-seq").first()
    assert recorded.action == AuditAction.AUDIT_VERIFIED and "not mailed" in recorded.message


@pytest.mark.django_db
def test_an_altered_checkpoint_fails_verification_naming_the_file(settings):
    add_events(2)
    assert verify_command()[1] is None
    (path,) = settings.OPS_AUDIT_CHECKPOINT_DIR.iterdir()
    document = json.loads(path.read_text())
    document["checkpoint"]["seq"] = 1  # "the log only ever had one event"
    os.chmod(path, 0o644)
    path.write_text(json.dumps(document))
    out, error = verify_command("--print-head")
    assert error is not None and error.returncode == 1 and out == ""
    assert CHECKPOINT in str(error) and path.name in str(error) and "bad signature" in str(error)


@pytest.mark.django_db
def test_checkpoints_without_a_key_to_check_them_are_an_error(settings):
    add_events(1)
    assert verify_command()[1] is None
    settings.OPS_AUDIT_SIGNING_KEY_FILE = ""
    _, error = verify_command()
    assert error is not None and error.returncode == 1 and "OPS_AUDIT_PUBLIC_KEY_FILE" in str(error)


def test_audit_keys_generate_writes_private_files_and_prints_only_the_public_key(tmp_path):
    out = StringIO()
    call_command("audit_keys", "--generate", "--dir", str(tmp_path), stdout=out)
    mac, signing, public = tmp_path / "audit-mac.key", tmp_path / "audit-signing.pem", tmp_path / "audit-public.pem"
    assert stat.S_IMODE(mac.stat().st_mode) == 0o600 and stat.S_IMODE(signing.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    text = out.getvalue()
    assert public.read_text() in text and f"OPS_AUDIT_KEY_FILE={mac}" in text
    assert mac.read_text().strip() not in text and "PRIVATE" not in text
    with pytest.raises(CommandError, match="refusing to overwrite"):
        call_command("audit_keys", "--generate", "--dir", str(tmp_path), stdout=StringIO())


def test_system_checks_for_missing_short_and_unreadable_keys(settings, tmp_path):
    settings.DEBUG = False
    settings.OPS_AUDIT_KEY, settings.OPS_AUDIT_KEY_FILE = "", ""
    settings.OPS_AUDIT_SIGNING_KEY_FILE, settings.OPS_AUDIT_PUBLIC_KEY_FILE = "", ""
    assert {e.id for e in check_audit_keys_deploy()} == {"opsapp.E040", "opsapp.E042"}
    settings.DEBUG = True
    assert check_audit_keys_deploy() == []

    settings.OPS_AUDIT_KEY = "short-key"
    errors = check_audit_keys()
    assert [e.id for e in errors] == ["opsapp.E041"] and "short-key" not in errors[0].msg
    settings.OPS_AUDIT_KEY, settings.OPS_AUDIT_KEY_FILE = "", str(tmp_path / "missing")
    settings.OPS_AUDIT_SIGNING_KEY_FILE = str(tmp_path / "nope.pem")
    assert [e.id for e in check_audit_keys()] == ["opsapp.E041", "opsapp.E043"]
    (tmp_path / "junk.pem").write_text("not a key")
    settings.OPS_AUDIT_KEY_FILE, settings.OPS_AUDIT_SIGNING_KEY_FILE = "", str(tmp_path / "junk.pem")
    assert [e.id for e in check_audit_keys()] == ["opsapp.E043"]


@pytest.mark.django_db
def test_without_a_key_and_with_debug_off_nothing_is_appended(settings):
    from opsapp.services.errors import AuditError

    settings.DEBUG = False
    settings.OPS_AUDIT_KEY = ""
    with pytest.raises(AuditError, match="opsapp.E040"):
        add_events(1)
    assert AuditEvent.objects.count() == 0


@pytest.mark.django_db
def test_with_debug_on_a_development_key_is_derived_from_the_secret_key(settings):
    settings.DEBUG = True
    settings.OPS_AUDIT_KEY = ""
    key = current_mac_key()
    assert key.key_id.startswith("dev-") and settings.SECRET_KEY.encode() not in key.secret
    add_events(1)
    assert AuditEvent.objects.get().key_id == key.key_id and verify_chain().ok


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_verifies_offline_against_the_published_checkpoints(fmt, settings, tmp_path):
    import shutil
    import subprocess
    import sys

    from opsapp.services.audit.keys import public_key, public_key_pem
    from tests.test_audit import REPO_ROOT

    add_events(4)
    assert verify_command()[1] is None  # checkpoint of #4
    add_events(1)
    export = tmp_path / f"q1.{fmt}"
    call_command("export_audit_log", "--format", fmt, "--output", str(export), stderr=StringIO())
    published = tmp_path / "published"
    shutil.copytree(settings.OPS_AUDIT_CHECKPOINT_DIR, published)
    key = tmp_path / "audit-public.pem"
    key.write_bytes(public_key_pem(public_key()))
    script = tmp_path / "verify_audit_evidence.py"
    shutil.copy(REPO_ROOT / "opsapp" / "services" / "audit" / "offline.py", script)

    def run(path):
        command = [sys.executable, str(script), str(path), "--checkpoints", str(published), "--public-key", str(key)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)

    result = run(export)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed checkpoint #4" in result.stdout and f"OK q1.{fmt}" in result.stdout

    tampered = tmp_path / f"tampered.{fmt}"
    tampered.write_text(export.read_text(encoding="utf-8").replace("event 2", "event 7"), encoding="utf-8")
    result = run(tampered)
    assert result.returncode == 1 and "event #3 was edited" in result.stdout

    (checkpoint,) = published.iterdir()
    os.chmod(checkpoint, 0o644)
    checkpoint.write_text(checkpoint.read_text().replace('"count": 4', '"count": 3'))
    result = run(export)
    assert result.returncode == 1 and f"{checkpoint.name}: the signature does not verify" in result.stdout
