"""Verify ops-console audit evidence offline: Python's standard library and `cryptography` only.

Hand this one file to an auditor, with the console's checkpoint public key
(`manage.py audit_keys --public-key`). It needs no database and no console code.

    python3 verify_audit_evidence.py BUNDLE.zip --public-key audit-public.pem
    python3 verify_audit_evidence.py EXPORT.jsonl --checkpoints DIR --public-key audit-public.pem

A bundle (`manage.py export_evidence`) passes when its signed manifest holds the
SHA-256 of every member, its checkpoint is signed by the trusted key, and its
events hash and link, event by event, up to the exact event the checkpoint
signed. An export (`manage.py export_audit_log`, CSV or JSON Lines) passes when
its events hash and link and agree with every signed checkpoint they reach.
Exit 0 when everything holds, 1 listing each finding (naming the member or the
event), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import zipfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FIELDS = (
    "seq",
    "created_at",
    "actor_user_id",
    "actor",
    "action",
    "outcome",
    "target_name",
    "request_id",
    "snapshot_id",
    "from_revision",
    "to_revision",
    "message",
    "detail",
    "client_ip",
    "user_agent",
    "prev_hash",
)
NUMBERS = ("seq", "actor_user_id", "request_id", "snapshot_id")
GENESIS = "0" * 64
BUNDLE_FORMAT = "ops-console-evidence/1"
CHECKPOINT_FORMAT = "ops-console-audit-checkpoint/1"


def canonical(value) -> bytes:
    """The console's canonical JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_hash(event: dict) -> str:
    data = {name: event[name] for name in FIELDS}
    if event.get("key_id"):
        data["key_id"] = event["key_id"]
    return hashlib.sha256(canonical(data)).hexdigest()


def read_public_key(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def raw_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_checkpoint(document: dict, key: Ed25519PublicKey, name: str) -> dict:
    """The checkpoint's body if its signature holds; raises ValueError naming `name`."""
    try:
        body, signature = document["checkpoint"], bytes.fromhex(document["signature"])
        key.verify(signature, canonical(body))
    except (KeyError, TypeError, ValueError, InvalidSignature):
        raise ValueError(f"{name}: the signature does not verify with the trusted public key") from None
    if body.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{name}: unknown checkpoint format {body.get('format')!r}")
    return body


def check_events(events: list[dict], checkpoints: list[dict], where: str, *, contiguous: bool) -> list[str]:
    """Findings about a run of events: hashes, links, and agreement with the signed checkpoints."""
    findings, previous, by_seq = [], None, {}
    for event in events:
        seq = event["seq"]
        by_seq[seq] = event
        if event_hash(event) != event["hash"]:
            findings.append(f"{where}: event #{seq} was edited (its fields do not match its hash)")
        if seq == 1 and event["prev_hash"] != GENESIS:
            findings.append(f"{where}: event #1 does not start the chain")
        if previous is not None:
            if seq == previous["seq"] + 1:
                if event["prev_hash"] != previous["hash"]:
                    findings.append(f"{where}: event #{seq} does not follow #{previous['seq']}")
            elif contiguous:
                findings.append(f"{where}: events #{previous['seq'] + 1} to #{seq - 1} are missing")
        previous = event
    for body in checkpoints:
        event = by_seq.get(body["seq"])
        if event is not None and event["hash"] != body["hash"]:
            findings.append(f"{where}: event #{body['seq']} is not the event checkpoint #{body['seq']} signed")
    return findings


def read_export(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        events = []
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for name in NUMBERS:
                    row[name] = int(row[name]) if row[name] else None
                row["client_ip"] = row["client_ip"] or None
                row["detail"] = json.loads(row["detail"])
                events.append(row)
        return events
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def verify_export(path: Path, checkpoint_dir: Path, key: Ed25519PublicKey) -> tuple[list[str], list[str]]:
    """(findings, notes) for an export checked against a directory of checkpoints."""
    findings, notes, checkpoints = [], [], []
    for file in sorted(checkpoint_dir.glob("checkpoint-*.json")):
        try:
            checkpoints.append(check_checkpoint(json.loads(file.read_text(encoding="utf-8")), key, file.name))
        except (ValueError, OSError) as exc:
            findings.append(str(exc))
    events = read_export(path)
    findings += check_events(events, checkpoints, path.name, contiguous=False)
    reached = [c for c in checkpoints if any(e["seq"] == c["seq"] for e in events)]
    if not events:
        notes.append("the export holds no events")
    elif reached:
        newest = max(reached, key=lambda c: c["seq"])
        notes.append(
            f"{len(events)} events #{events[0]['seq']}..#{events[-1]['seq']}; signed checkpoint #{newest['seq']} "
            f"({newest['time']}) vouches for every linked event up to #{newest['seq']}"
        )
    else:
        notes.append(f"{len(events)} events, but none of them is named by a signed checkpoint")
    return findings, notes


def check_rehearsal_result(rehearsal: dict, event: dict) -> list[str]:
    """A rehearsal's recorded result agrees with its `rehearsal_succeeded` event in the signed chain.

    The event was written when the rehearsal finished; the bundle's copy comes
    from the console's rehearsal table at export. The schema after the
    downgrade is compared by the SHA-256 of its canonical JSON (events made
    before that digest was recorded carry none: the schema is then vouched for
    by the manifest signature only).
    """
    name, seq = f"rehearsal #{rehearsal['id']}", event["seq"]
    detail = event.get("detail") or {}
    findings = []
    if rehearsal.get("status") != "succeeded":
        findings.append(f"rehearsals.json: {name} is {rehearsal.get('status')!r}, but event #{seq} says it succeeded")
    for key, recorded in (
        ("snapshot", "snapshot"),
        ("plan_fingerprint", "plan_fingerprint"),
        ("destroyed", "destroyed"),
    ):
        if recorded in detail and canonical(rehearsal.get(key)) != canonical(detail[recorded]):
            findings.append(f"rehearsals.json: {key} of {name} is not what its audit event #{seq} recorded")
    digest = detail.get("schema_after_sha256")
    if digest is not None:
        if "schema_after" not in rehearsal:
            findings.append(f"rehearsals.json: {name} has no schema_after, but its audit event #{seq} records one")
        elif hashlib.sha256(canonical(rehearsal["schema_after"])).hexdigest() != digest:
            findings.append(
                f"rehearsals.json: schema_after of {name} is not the schema its audit event #{seq} recorded "
                "(SHA-256 differs)"
            )
        if rehearsal.get("schema_after_sha256") not in (None, digest):
            findings.append(f"rehearsals.json: schema_after_sha256 of {name} is not its audit event #{seq}'s")
    return findings


def check_rehearsals(rehearsals: list[dict], events: list[dict], request_id: int) -> list[str]:
    """Each rehearsal in rehearsals.json is audited in the segment, each audited one is listed, and a
    succeeded one's result (snapshot, plan, losses, schema after) is what its audit event recorded."""
    findings = []
    listed = set()
    by_seq = {e["seq"]: e for e in events}
    for rehearsal in rehearsals:
        listed.add(rehearsal["id"])
        seqs = rehearsal.get("audit_events") or []
        if not seqs:
            findings.append(f"rehearsals.json: rehearsal #{rehearsal['id']} has no audit event")
        for seq in seqs:
            event = by_seq.get(seq)
            if (
                event is None
                or event["request_id"] != request_id
                or not str(event["action"]).startswith("rehearsal_")
                or (event.get("detail") or {}).get("rehearsal") != rehearsal["id"]
            ):
                findings.append(f"rehearsals.json: event #{seq} of rehearsal #{rehearsal['id']} is not in events.jsonl")
            elif event["action"] == "rehearsal_succeeded":
                findings += check_rehearsal_result(rehearsal, event)
    for event in events:
        detail = event.get("detail") or {}
        if (
            event["request_id"] == request_id
            and str(event["action"]).startswith("rehearsal_")
            and isinstance(detail, dict)
            and detail.get("rehearsal") is not None
            and detail["rehearsal"] not in listed
        ):
            findings.append(f"rehearsals.json: rehearsal #{detail['rehearsal']} (event #{event['seq']}) is missing")
    return sorted(set(findings))


def verify_bundle(path: Path, key: Ed25519PublicKey) -> tuple[list[str], list[str]]:
    """(findings, notes) for an evidence bundle from `manage.py export_evidence`."""
    findings: list[str] = []
    members: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as bundle:
            for info in bundle.infolist():
                try:
                    members[info.filename] = bundle.read(info)
                except (zipfile.BadZipFile, OSError) as exc:
                    findings.append(f"{info.filename}: damaged ({exc})")
    except (zipfile.BadZipFile, OSError) as exc:
        return [f"{path.name}: not a readable zip file ({exc})"], []
    if findings:
        return findings, []
    manifest_bytes, signature = members.get("MANIFEST.json"), members.get("MANIFEST.sig")
    if manifest_bytes is None or signature is None:
        return ["MANIFEST.json / MANIFEST.sig: missing"], []
    try:
        key.verify(bytes.fromhex(signature.decode("ascii").strip()), manifest_bytes)
        manifest = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError, InvalidSignature):
        return ["MANIFEST.json: its signature (MANIFEST.sig) does not verify with the trusted public key"], []
    if manifest.get("format") != BUNDLE_FORMAT:
        return [f"MANIFEST.json: unknown format {manifest.get('format')!r}"], []
    listed = manifest["members"]
    for name in sorted(set(members) - set(listed) - {"MANIFEST.json", "MANIFEST.sig"}):
        findings.append(f"{name}: not listed in the signed manifest")
    for name, digest in sorted(listed.items()):
        if name not in members:
            findings.append(f"{name}: missing")
        elif hashlib.sha256(members[name]).hexdigest() != digest:
            findings.append(f"{name}: changed since the bundle was signed (SHA-256 differs from the manifest)")
    if findings:
        return findings, []
    try:
        if raw_key(read_public_key(members["public_key.pem"])) != raw_key(key):
            findings.append("public_key.pem: not the public key you trust")
        body = check_checkpoint(json.loads(members["checkpoint.json"]), key, "checkpoint.json")
        events = [json.loads(line) for line in members["events.jsonl"].decode("utf-8").splitlines() if line.strip()]
        request = json.loads(members["request.json"])
    except (ValueError, KeyError) as exc:
        return [*findings, str(exc)], []
    findings += check_events(events, [body], "events.jsonl", contiguous=True)
    if not events or events[-1]["seq"] != body["seq"] or events[-1]["hash"] != body["hash"]:
        findings.append(f"events.jsonl: the chain segment does not end at the signed checkpoint #{body['seq']}")
    by_seq = {e["seq"]: e for e in events}
    request_id = request["request"]["id"]
    for seq in manifest["event_seqs"]:
        if seq not in by_seq or by_seq[seq]["request_id"] != request_id:
            findings.append(f"events.jsonl: event #{seq} of request #{request_id} is not in the segment")
    rehearsals: list[dict] = []
    if "rehearsals.json" in members:  # bundles made before rehearsals were queued have none
        try:
            rehearsals = json.loads(members["rehearsals.json"])
        except ValueError as exc:
            return [*findings, f"rehearsals.json: unreadable ({exc})"], []
        findings += check_rehearsals(rehearsals, events, request_id)
    notes = [
        f"request #{request_id}: {len(manifest['event_seqs'])} events, chain #{events[0]['seq'] if events else '?'}.."
        f"#{body['seq']} signed by checkpoint of {body['time']} (signer {body['signer']})",
        f"{len(rehearsals)} rehearsal(s), each with its audit events in the segment and its result as they recorded it",
    ]
    return findings, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="an evidence bundle (.zip) or an audit export (.jsonl / .csv)")
    parser.add_argument("--public-key", type=Path, required=True, help="the console's checkpoint public key (PEM)")
    parser.add_argument("--checkpoints", type=Path, help="the published checkpoint directory (for an export)")
    args = parser.parse_args(argv)
    try:
        key = read_public_key(args.public_key.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"cannot use {args.public_key} as the public key: {exc}", file=sys.stderr)
        return 2
    if args.file.suffix == ".zip" or zipfile.is_zipfile(args.file):
        findings, notes = verify_bundle(args.file, key)
    elif args.checkpoints is None:
        print("an export needs --checkpoints DIR (the published checkpoint directory)", file=sys.stderr)
        return 2
    else:
        try:
            findings, notes = verify_export(args.file, args.checkpoints, key)
        except (OSError, ValueError, KeyError) as exc:
            findings, notes = [f"{args.file.name}: unreadable ({exc})"], []
    for finding in findings:
        print(f"FAIL {finding}")
    for note in notes:
        print(note)
    if not findings:
        print(f"OK {args.file.name}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
