"""Signed checkpoints of the audit chain, kept outside the console's database.

A checkpoint says "on TIME the chain held COUNT events and event #SEQ had hash
H and MAC M (key K)", signed with the Ed25519 checkpoint key. verify_audit_log
writes one after every successful run into OPS_AUDIT_CHECKPOINT_DIR, an
append-only directory the operator publishes (synced to a write-once bucket,
mailed to the auditors: see docs/audit.md), as AWS CloudTrail does with its
signed digest files and Certificate Transparency with signed tree heads.

Every later verify checks the table against every checkpoint: a cut tail, a
truncate, a truncate-and-re-append, or any rewrite up to a checkpointed seq
fails at that seq. Someone with only the database can neither change the
files nor sign new ones.

File format (one JSON object per file, `checkpoint-<seq>.json`):
    {"checkpoint": {"format": FORMAT, "seq": .., "hash": .., "mac": .., "count": ..,
                    "time": .., "key_id": .., "signer": ..},
     "signature": "<hex Ed25519 signature of the canonical JSON of 'checkpoint'>"}
The canonical JSON is the chain's: sorted keys, no whitespace, UTF-8.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsapp.services.audit.chain import canonical_encoder
from opsapp.services.audit.keys import public_key_id
from opsapp.services.errors import AuditError

FORMAT = "ops-console-audit-checkpoint/1"
PATTERN = "checkpoint-*.json"


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    mac: str
    count: int
    time: str
    key_id: str
    path: Path

    @property
    def label(self) -> str:
        return f"checkpoint {self.path.name} ({self.time})"


class CheckpointError(AuditError):
    """A checkpoint file that does not verify: unreadable, malformed, or a bad signature."""


def signed_bytes(body: dict[str, Any]) -> bytes:
    return canonical_encoder(body).encode()


def _parse(path: Path, key: Ed25519PublicKey) -> Checkpoint:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        body, signature = data["checkpoint"], bytes.fromhex(data["signature"])
        if body.get("format") != FORMAT:
            raise ValueError(f"unknown format {body.get('format')!r}")
        checkpoint = Checkpoint(
            int(body["seq"]), body["hash"], body["mac"], int(body["count"]), body["time"], body["key_id"], path
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable or malformed ({exc})") from None
    try:
        key.verify(signature, signed_bytes(body))
    except InvalidSignature:
        raise CheckpointError(
            f"checkpoint {path.name} has a bad signature: it was altered or not signed by the audit signing key"
        ) from None
    return checkpoint


def load_checkpoints(directory: Path, key: Ed25519PublicKey | None) -> list[Checkpoint]:
    """Every checkpoint in `directory`, oldest seq first. Raises CheckpointError on any bad file.

    Two checkpoints naming the same seq with different hashes is an error too
    (the chain was rewritten between them).
    """
    paths = sorted(directory.glob(PATTERN)) if directory.is_dir() else []
    if not paths:
        return []
    if key is None:
        raise CheckpointError(
            f"{len(paths)} checkpoints in {directory} but no key to check their signatures: "
            "set OPS_AUDIT_PUBLIC_KEY_FILE (or OPS_AUDIT_SIGNING_KEY_FILE)"
        )
    checkpoints = sorted((_parse(path, key) for path in paths), key=lambda c: (c.seq, c.path.name))
    seen: dict[int, Checkpoint] = {}
    for checkpoint in checkpoints:
        other = seen.setdefault(checkpoint.seq, checkpoint)
        if other.hash != checkpoint.hash:
            raise CheckpointError(
                f"{other.label} and {checkpoint.label} name different hashes for event #{checkpoint.seq}"
            )
    return checkpoints


def checkpoint_body(*, seq: int, event_hash: str, mac: str, count: int, key_id: str, signer: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "seq": seq,
        "hash": event_hash,
        "mac": mac,
        "count": count,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "key_id": key_id,
        "signer": signer,
    }


def write_checkpoint(directory: Path, key: Ed25519PrivateKey, body: dict[str, Any]) -> Path:
    """Sign `body` and write it as a new file (never overwriting one). Raises AuditError (OSError inside)."""
    body = {**body, "signer": public_key_id(key.public_key())}
    document = {"checkpoint": body, "signature": key.sign(signed_bytes(body)).hex()}
    text = json.dumps(document, sort_keys=True, indent=1) + "\n"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for n in range(100):
            path = directory / (f"checkpoint-{body['seq']:012d}" + (f"-{n}" if n else "") + ".json")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            return path
    except OSError as exc:
        raise AuditError(f"cannot write a checkpoint to {directory}: {exc.strerror}") from None
    raise AuditError(f"too many checkpoints for event #{body['seq']} in {directory}")


def read_checkpoint_document(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def mail_checkpoint(path: Path) -> list[str]:
    """E-mail the signed checkpoint file to every active auditor with an address; return the addresses.

    The file goes as an attachment, byte for byte: the auditors keep it and
    check it with the public key (docs/audit.md). Raises AuditError when no
    auditor has an address or the mail cannot be sent.
    """
    import smtplib

    from django.contrib.auth import get_user_model
    from django.core.mail import EmailMessage

    auditors = get_user_model().objects.filter(is_active=True, groups__name="auditors").exclude(email="")
    recipients = sorted(set(auditors.values_list("email", flat=True)))
    if not recipients:
        raise AuditError(f"{path.name} was not mailed: no active member of the auditors group has an e-mail address")
    body = read_checkpoint_document(path)["checkpoint"]
    message = EmailMessage(
        subject=f"[ops console] signed audit checkpoint #{body['seq']}",
        body=(
            f"The audit log held {body['count']} events at {body['time']}; event #{body['seq']} has hash "
            f"{body['hash']}.\nKeep the attached file: verify it, and later exports and evidence bundles, "
            "with the checkpoint public key (docs/audit.md, offline verification).\n"
        ),
        to=recipients,
    )
    message.attach(path.name, path.read_bytes(), "application/json")
    try:
        message.send()
    except (OSError, smtplib.SMTPException) as exc:
        raise AuditError(f"{path.name} was not mailed to the auditors: {exc}") from exc
    return recipients
