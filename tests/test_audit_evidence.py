"""Evidence bundles: one zip per rollback request that an auditor verifies offline (issue 12)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from opsapp.models import AuditAction, AuditEvent
from opsapp.services.audit.keys import public_key, public_key_pem
from tests.test_audit import REPO_ROOT

pytest.register_assert_rewrite("rollback_fixtures")
pytest_plugins = ["rollback_fixtures"]
pytestmark = [pytest.mark.django_db, pytest.mark.slow]

MEMBERS = [
    "request.json",
    "rehearsals.json",
    "events.jsonl",
    "checkpoint.json",
    "public_key.pem",
    "README.txt",
    "MANIFEST.json",
    "MANIFEST.sig",
]


def offline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The auditor's side: the one file, copied away from the project, run with no console code importable."""
    script = tmp_path / "auditor" / "verify_audit_evidence.py"
    if not script.exists():
        script.parent.mkdir()
        shutil.copy(REPO_ROOT / "opsapp" / "services" / "audit" / "offline.py", script)
    guard = "\n".join(
        [
            "import runpy, sys",
            "sys.argv = sys.argv[1:]",
            "sys.path = [p for p in sys.path if p and 'site-packages' in p or p.startswith(sys.base_prefix)]",
            "try:",
            "    runpy.run_path(sys.argv[0], run_name='__main__')",
            "finally:",
            "    assert 'django' not in sys.modules and 'opsapp' not in sys.modules, 'console code imported'",
        ]
    )
    return subprocess.run(
        [sys.executable, "-c", guard, str(script), *args],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def write_public_key(tmp_path: Path) -> Path:
    path = tmp_path / "auditors-copy-of-the-key.pem"
    path.write_bytes(public_key_pem(public_key()))
    return path


def rebuild(source: Path, target: Path, member: str, change) -> None:
    """A bundle with one member changed, re-zipped properly (valid CRCs): only the signatures can tell."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            new.writestr(info, change(data) if info.filename == member else data)


def flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def test_a_request_bundle_verifies_offline_and_any_changed_member_is_named(ready_request, tmp_path):
    request = ready_request.request
    bundle = tmp_path / "evidence.zip"
    call_command("export_evidence", str(request.pk), "--output", str(bundle), stderr=StringIO())

    with zipfile.ZipFile(bundle) as z:
        assert sorted(z.namelist()) == sorted(MEMBERS)
        facts = z.read("request.json").decode()
        events = z.read("events.jsonl").decode()
    assert request.reason in facts and request.sql_sha256 in facts and ready_request.snapshot.sha256 in facts
    assert ready_request.code not in facts and request.code_hash not in facts  # never the code
    seqs = list(AuditEvent.objects.filter(request_id=request.pk).values_list("seq", flat=True))
    assert seqs and all(f'"seq":{seq},' in events for seq in seqs)
    exported = AuditEvent.objects.order_by("-seq").first()
    assert exported.action == AuditAction.EVIDENCE_EXPORTED and exported.detail["request"] == request.pk

    key = write_public_key(tmp_path)
    result = offline(tmp_path, str(bundle), "--public-key", str(key))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"request #{request.pk}" in result.stdout and "OK evidence.zip" in result.stdout
    out = StringIO()
    call_command("verify_evidence", str(bundle), "--public-key", str(key), stdout=out)
    assert "OK evidence.zip" in out.getvalue()

    for member in MEMBERS:
        changed = tmp_path / f"changed-{member}.zip"
        rebuild(bundle, changed, member, flip)
        result = offline(tmp_path, str(changed), "--public-key", str(key))
        assert result.returncode == 1, (member, result.stdout)
        assert member in result.stdout and "OK" not in result.stdout, result.stdout

    # One raw byte flipped in the zip file itself, inside request.json's data.
    raw = bytearray(bundle.read_bytes())
    with zipfile.ZipFile(bundle) as z:
        info = z.getinfo("request.json")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.file_size // 2] ^= 0x01
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(raw))
    result = offline(tmp_path, str(damaged), "--public-key", str(key))
    assert result.returncode == 1 and "request.json" in result.stdout, result.stdout
    with pytest.raises(CommandError, match="does not verify"):
        call_command("verify_evidence", str(damaged), "--public-key", str(key), stdout=StringIO())


def resign(source: Path, target: Path, member: str, data: bytes) -> None:
    """A bundle with `member` replaced and its manifest re-signed with the console's own key.

    What only someone holding the signing key could make: the checks that remain are the
    cross-checks between members (here: rehearsals.json against events.jsonl).
    """
    import hashlib
    import json

    from opsapp.services.audit.keys import signing_key

    with zipfile.ZipFile(source) as old:
        members = {info.filename: old.read(info) for info in old.infolist()}
    members[member] = data
    manifest = json.loads(members["MANIFEST.json"])
    manifest["members"][member] = hashlib.sha256(data).hexdigest()
    members["MANIFEST.json"] = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    members["MANIFEST.sig"] = signing_key().sign(members["MANIFEST.json"]).hex().encode() + b"\n"
    with zipfile.ZipFile(target, "w") as new:
        for name, value in members.items():
            new.writestr(name, value)


def test_the_requests_rehearsals_are_in_the_bundle_with_their_audit_events_and_verify_offline(
    ready_request, operator, tmp_path
):
    import json

    from rollback_fixtures import operator_actor

    from opsapp.models import Operation
    from opsapp.services.operations.queue import enqueue_rehearsal
    from tests.operations_support import run_queued_jobs

    request = ready_request.request
    op = enqueue_rehearsal(request.pk, actor=operator_actor(operator))
    assert run_queued_jobs() == 1
    op = Operation.objects.get(pk=op.pk)
    assert op.state == "succeeded", op.error
    bundle = tmp_path / "evidence.zip"
    call_command("export_evidence", str(request.pk), "--output", str(bundle), stderr=StringIO())

    with zipfile.ZipFile(bundle) as z:
        (rehearsal,) = json.loads(z.read("rehearsals.json"))
        events = {e["seq"]: e for e in map(json.loads, z.read("events.jsonl").decode().splitlines())}
    assert rehearsal["id"] == op.result["rehearsal"] and rehearsal["status"] == "succeeded"
    assert rehearsal["snapshot"] == ready_request.snapshot.pk
    assert rehearsal["plan_fingerprint"] == request.plan_fingerprint
    assert rehearsal["destroyed"]["rows"] == {"notes": 2}
    assert rehearsal["operation"]["id"] == op.pk and rehearsal["operation"]["requested_by"] == operator.username
    assert [events[seq]["action"] for seq in rehearsal["audit_events"]] == [
        "rehearsal_started",
        "rehearsal_succeeded",
    ]
    key = write_public_key(tmp_path)
    result = offline(tmp_path, str(bundle), "--public-key", str(key))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rehearsal(s), each with its audit events in the segment" in result.stdout

    # A rehearsal left out of rehearsals.json is found from its audit events, even under a valid signature.
    emptied = tmp_path / "no-rehearsals.zip"
    resign(bundle, emptied, "rehearsals.json", b"[]")
    result = offline(tmp_path, str(emptied), "--public-key", str(key))
    assert result.returncode == 1
    assert f"rehearsals.json: rehearsal #{rehearsal['id']} (event #{rehearsal['audit_events'][0]}) is missing" in (
        result.stdout
    )
    # A rehearsal whose events are not the ones named fails too.
    forged = tmp_path / "forged.zip"
    resign(bundle, forged, "rehearsals.json", json.dumps([{**rehearsal, "audit_events": [1]}]).encode())
    result = offline(tmp_path, str(forged), "--public-key", str(key))
    assert result.returncode == 1 and "rehearsals.json: event #1 of rehearsal" in result.stdout, result.stdout


def test_the_schema_after_a_rehearsal_is_in_the_bundle_and_a_changed_one_fails_naming_the_member(
    ready_request, operator, tmp_path
):
    import json

    from rollback_fixtures import operator_actor

    from opsapp.models import Rehearsal
    from opsapp.services.rehearsal.run import run_rehearsal

    request = ready_request.request
    rehearsal = run_rehearsal(request.pk, actor=operator_actor(operator))
    assert rehearsal.status == "succeeded"
    bundle = tmp_path / "evidence.zip"
    call_command("export_evidence", str(request.pk), "--output", str(bundle), stderr=StringIO())
    with zipfile.ZipFile(bundle) as z:
        (listed,) = json.loads(z.read("rehearsals.json"))
    assert listed["schema_after"] == rehearsal.schema_after
    assert sorted(listed["schema_after"]["customers"]["columns"]) == ["id", "name"]  # r1: email and notes gone
    key = write_public_key(tmp_path)
    assert offline(tmp_path, str(bundle), "--public-key", str(key)).returncode == 0

    forged_schema = json.loads(json.dumps(listed["schema_after"]))
    forged_schema["customers"]["columns"]["email"] = {"type": "VARCHAR(100)", "nullable": True}
    # Edited in the zip: the signed manifest names the member.
    edited = tmp_path / "edited.zip"
    rebuild(
        bundle,
        edited,
        "rehearsals.json",
        lambda data: json.dumps([{**json.loads(data)[0], "schema_after": forged_schema}]).encode(),
    )
    result = offline(tmp_path, str(edited), "--public-key", str(key))
    assert result.returncode == 1
    assert "rehearsals.json: changed since the bundle was signed" in result.stdout, result.stdout
    # Re-signed with the console's own key: the audit chain still names the member and the rehearsal.
    resigned = tmp_path / "resigned.zip"
    resign(bundle, resigned, "rehearsals.json", json.dumps([{**listed, "schema_after": forged_schema}]).encode())
    result = offline(tmp_path, str(resigned), "--public-key", str(key))
    assert result.returncode == 1, result.stdout
    assert f"rehearsals.json: schema_after of rehearsal #{rehearsal.pk} is not the schema its audit event" in (
        result.stdout
    )
    # The rehearsal's row changed in the console's database before an export: the bundle is signed, yet
    # both verifiers (the auditor's file and manage.py verify_evidence) find the member.
    Rehearsal.objects.filter(pk=rehearsal.pk).update(schema_after=forged_schema)
    later = tmp_path / "later.zip"
    call_command("export_evidence", str(request.pk), "--output", str(later), stderr=StringIO())
    result = offline(tmp_path, str(later), "--public-key", str(key))
    assert result.returncode == 1 and f"schema_after of rehearsal #{rehearsal.pk}" in result.stdout, result.stdout
    out = StringIO()
    with pytest.raises(CommandError, match="does not verify"):
        call_command("verify_evidence", str(later), "--public-key", str(key), stdout=out)
    assert f"FAIL rehearsals.json: schema_after of rehearsal #{rehearsal.pk}" in out.getvalue()
    assert "OK" not in out.getvalue()


def test_a_bundle_checked_with_another_key_fails(ready_request, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    bundle = tmp_path / "evidence.zip"
    call_command("export_evidence", str(ready_request.request.pk), "--output", str(bundle), stderr=StringIO())
    other = tmp_path / "other.pem"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    result = offline(tmp_path, str(bundle), "--public-key", str(other))
    assert result.returncode == 1 and "MANIFEST.json" in result.stdout


def test_export_evidence_refuses_an_unknown_request_and_writes_nothing(tmp_path):
    with pytest.raises(CommandError, match="no rollback request #999"):
        call_command("export_evidence", "999", "--output", str(tmp_path / "x.zip"), stderr=StringIO())
    assert not (tmp_path / "x.zip").exists()


def test_the_evidence_button_is_for_auditors_and_operators_only(ready_request, client, approver, auditor, settings):
    from django.urls import reverse

    url = reverse("admin:opsapp_rollbackrequest_evidence", args=[ready_request.request.pk])
    page = reverse("admin:opsapp_rollbackrequest_change", args=[ready_request.request.pk])
    before = AuditEvent.objects.count()

    client.force_login(approver)
    assert "Download evidence" not in client.get(page).content.decode()
    assert client.post(url).status_code == 403
    assert AuditEvent.objects.count() == before  # refused before anything was written

    client.force_login(auditor)
    assert "Download evidence" in client.get(page).content.decode()
    assert client.get(url).status_code == 405
    response = client.post(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert f"evidence-request-{ready_request.request.pk}.zip" in response["Content-Disposition"]
    assert AuditEvent.objects.order_by("-seq").first().action == AuditAction.EVIDENCE_EXPORTED

    # Without the signing key there is no bundle: the page says why, nothing is exported.
    settings.OPS_AUDIT_SIGNING_KEY_FILE = ""
    count = AuditEvent.objects.count()
    response = client.post(url, follow=True)
    assert "No evidence bundle: evidence bundles are signed" in response.content.decode()
    assert AuditEvent.objects.count() == count
