"""Recompute the audit chain, check it against the signed checkpoints, and say where it first breaks.

Reads the table in `seq` order through chain.payload_rows: on PostgreSQL
one `COPY (SELECT ...) TO STDOUT` streamed while the server is still sending,
each text line turned straight into the canonical payload (no per-column type
conversion; `created_at` formatted by the database; `detail` parsed and
re-serialized by the JSON C accelerator without building an encoder per
event). The per-event cost is that serialization, one SHA-256 and one
HMAC-SHA256 from precomputed key pads (chain.mac_function).

Problems, reported at the first broken sequence number:
- ``missing``:   a sequence number is absent (an event was deleted), or the
  table ends before the newest signed checkpoint (the tail was cut, or the
  table truncated);
- ``edited``:    an event's fields no longer hash to its stored hash, its MAC
  is wrong (a forged or rehashed event), or its hash is not the one a signed
  checkpoint recorded;
- ``reordered``: an event's prev_hash is not the previous event's hash;
- ``unkeyed``:   an event without a MAC after keyed events (not written by
  the console), or MACed with a key this host does not know;
- ``checkpoint``: a checkpoint file is altered, unsigned or contradicts another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from typing import Any

from django.conf import settings

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.chain import GENESIS_HASH, PayloadRow, current_head, mac_function, payload_rows
from opsapp.services.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    checkpoint_body,
    load_checkpoints,
    mail_checkpoint,
    write_checkpoint,
)
from opsapp.services.audit.keys import public_key, signing_key, verification_keys
from opsapp.services.audit.log import append_event
from opsapp.services.errors import AuditError

EDITED = "edited"
MISSING = "missing"
REORDERED = "reordered"
UNKEYED = "unkeyed"
CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str  # "" when ok, else EDITED / MISSING / REORDERED / UNKEYED / CHECKPOINT
    message: str
    head_seq: int | None
    head_hash: str | None
    checkpoints_checked: int = 0
    checkpoint_written: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_chain(
    *,
    batch_size: int = 5000,
    anchor: tuple[int, str] | None = None,
    checkpoints: list[Checkpoint] = (),
    keys: dict[str, bytes] | None = None,
) -> VerifyResult:
    """Recompute every hash, MAC and link, oldest first; stop at the first problem.

    `anchor` is a (seq, hash) pair recorded outside the database earlier
    (`--print-head`); `checkpoints` are signed ones (already signature-checked):
    each named event must still exist with that hash. `keys` are the MAC keys
    by id (default: the configured ones).
    """
    keys = verification_keys() if keys is None else keys
    macs = {key_id: mac_function(secret) for key_id, secret in keys.items()}
    pins = {c.seq: (c.hash, c.label) for c in checkpoints}
    if anchor is not None:
        pins.setdefault(anchor[0], (anchor[1], "the anchor"))
    expected, prev, checked, keyed = 1, GENESIS_HASH, 0, False
    sha256 = hashlib.sha256

    def bad(seq: int, problem: str, message: str) -> VerifyResult:
        head = current_head()
        return VerifyResult(False, checked, seq, problem, message, *(head or (None, None)), len(checkpoints))

    problem = None
    with closing(payload_rows(0, batch_size)) as stream:
        for row in stream:
            seq, payload, row_prev, stored, key_id, row_mac = row
            mac = macs.get(key_id) if key_id else None
            # One test for the event that holds (nearly all of them); _diagnose names what broke.
            if (
                seq != expected
                or sha256(payload).hexdigest() != stored
                or (mac(stored) != row_mac if mac else key_id or keyed)
                or row_prev != prev
                or (seq in pins and pins[seq][0] != stored)
            ):
                problem = _diagnose(row, expected, prev, keyed, macs, pins)
                break
            keyed = keyed or bool(key_id)
            prev, expected, checked = stored, expected + 1, checked + 1
    # The stream is closed (its COPY cancelled) before reading anything else on the connection.
    if problem is not None:
        return bad(*problem)
    head_seq = expected - 1 if checked else None
    newest = max(pins, default=0)
    if newest > (head_seq or 0):
        what = "the table is empty" if not checked else f"the log ends at #{head_seq}"
        return bad(
            (head_seq or 0) + 1,
            MISSING,
            f"{what} but {pins[newest][1]} names #{newest}: events #{(head_seq or 0) + 1}.. were removed",
        )
    message = f"{checked} events verified" + (f", head #{head_seq} {prev}" if checked else "")
    if checkpoints:
        message += f", against {len(checkpoints)} signed checkpoints"
    return VerifyResult(True, checked, None, "", message, head_seq, prev if checked else None, len(checkpoints))


def _diagnose(
    row: PayloadRow,
    expected: int,
    prev: str,
    keyed: bool,
    macs: dict[str, Callable[[str], str]],
    pins: dict[int, tuple[str, str]],
) -> tuple[int, str, str]:
    """(seq, problem, message) for an event that failed verify_chain's test, checks in order of precedence."""
    seq, payload, row_prev, stored, key_id, row_mac = row
    if seq != expected:
        gap = f"#{expected}" if seq == expected + 1 else f"#{expected} to #{seq - 1}"
        return expected, MISSING, f"event {gap} missing: the chain jumps from #{expected - 1} to #{seq}"
    if hashlib.sha256(payload).hexdigest() != stored:
        return seq, EDITED, f"event #{seq} was edited: its fields no longer match its hash"
    if key_id and key_id not in macs:
        return (
            seq,
            UNKEYED,
            f"event #{seq} is MACed with audit key {key_id}, which this host does not have "
            "(a retired key belongs in OPS_AUDIT_PREVIOUS_KEYS_FILE)",
        )
    if key_id and macs[key_id](stored) != row_mac:
        return seq, EDITED, f"event #{seq} was edited or forged: its MAC does not match (key {key_id})"
    if not key_id and keyed:
        return seq, UNKEYED, f"event #{seq} has no MAC but follows keyed events: the console did not write it"
    if row_prev != prev:
        return (
            seq,
            REORDERED,
            f"event #{seq} does not follow #{seq - 1}: its prev_hash is not the hash of #{seq - 1} "
            "(events reordered or replaced, or the chain forked)",
        )
    return seq, EDITED, f"event #{seq} is not the event {pins[seq][1]} signed: the log was rewritten"


def run_verification(
    *, actor: Actor, batch_size: int = 5000, anchor: tuple[int, str] | None = None, checkpoint: bool = True
) -> VerifyResult:
    """What cron runs: check the checkpoints, verify the chain, sign a new checkpoint, record the result.

    A new checkpoint is written only for a chain that verified, and only when
    this host has the signing key, and mailed to the auditors with
    OPS_AUDIT_CHECKPOINT_MAIL. Raises AuditError when it cannot write or mail the
    checkpoint or record the result (the command exits 1).
    """
    directory = settings.OPS_AUDIT_CHECKPOINT_DIR
    try:
        checkpoints = load_checkpoints(directory, public_key())
    except CheckpointError as exc:
        head = current_head()
        result = VerifyResult(False, 0, None, CHECKPOINT, str(exc), *(head or (None, None)))
        record_verification(result, actor=actor)
        return result
    result = verify_chain(batch_size=batch_size, anchor=anchor, checkpoints=checkpoints)
    private = signing_key() if checkpoint else None
    if result.ok and result.head_seq is not None and private is not None:
        row = AuditEvent.objects.filter(seq=result.head_seq).values_list("mac", "key_id").get()
        body = checkpoint_body(
            seq=result.head_seq, event_hash=result.head_hash, mac=row[0], count=result.checked, key_id=row[1], signer=""
        )
        path = write_checkpoint(directory, private, body)
        result = replace(result, checkpoint_written=str(path), message=f"{result.message}; signed {path.name}")
        if settings.OPS_AUDIT_CHECKPOINT_MAIL:
            try:
                recipients = mail_checkpoint(path)
            except AuditError as exc:
                # The chain holds, but the copy outside the operators' reach is missing: record it, then fail.
                record_verification(replace(result, message=f"{result.message}; {exc}"), actor=actor)
                raise
            result = replace(result, message=f"{result.message}, mailed to {len(recipients)} auditor(s)")
    elif result.ok and checkpoint and private is None:
        result = replace(result, message=f"{result.message}; no checkpoint signed (no OPS_AUDIT_SIGNING_KEY_FILE)")
    record_verification(result, actor=actor)
    return result


def record_verification(result: VerifyResult, *, actor: Actor) -> AuditEvent:
    """Write the outcome as an AUDIT_VERIFIED event (the admin shows the latest one)."""
    return append_event(
        action=AuditAction.AUDIT_VERIFIED,
        outcome=AuditOutcome.SUCCESS if result.ok else AuditOutcome.FAILURE,
        actor=actor,
        message=result.message,
        detail=result.as_dict(),
    )


def last_verification() -> AuditEvent | None:
    """The latest recorded verification (index audit_action_seq)."""
    return AuditEvent.objects.filter(action=AuditAction.AUDIT_VERIFIED).order_by("-seq").first()
