"""Recompute the audit hash chain and say where it first breaks.

Reads the table in `seq` order with keyset pagination (`WHERE seq > last
ORDER BY seq LIMIT n`, on the unique index), straight from a cursor: no model
instances, and on PostgreSQL the database formats `created_at` itself, so the
per-row cost is one JSON parse of `detail`, one encode and one SHA-256.

Problems, reported at the first broken sequence number:
- ``missing``:   a sequence number is absent (an event was deleted);
- ``edited``:    an event's fields no longer hash to its stored hash;
- ``reordered``: an event's prev_hash is not the previous event's hash
  (events swapped, replaced with rehashed copies, or the chain forked).
Deleting the newest events leaves no trace inside the table: that is what the
external anchor (`verify_audit_log --print-head`, `--anchor`) is for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.chain import (
    GENESIS_HASH,
    HASH,
    PREV,
    batches,
    current_head,
    row_hash,
)
from opsapp.services.audit.log import append_event

EDITED = "edited"
MISSING = "missing"
REORDERED = "reordered"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str  # "" when ok, else EDITED / MISSING / REORDERED
    message: str
    head_seq: int | None
    head_hash: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_chain(*, batch_size: int = 5000, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Recompute every hash and link, oldest first; stop at the first problem.

    `anchor` is a (seq, hash) pair recorded outside the database earlier
    (`--print-head`): that event must still exist with that hash.
    """
    expected, prev, checked = 1, GENESIS_HASH, 0

    def bad(seq: int, problem: str, message: str) -> VerifyResult:
        head = current_head()
        return VerifyResult(False, checked, seq, problem, message, *(head or (None, None)))

    for rows in batches(0, batch_size):
        for row in rows:
            seq = row[0]
            if seq != expected:
                gap = f"#{expected}" if seq == expected + 1 else f"#{expected} to #{seq - 1}"
                return bad(expected, MISSING, f"event {gap} missing: the chain jumps from #{expected - 1} to #{seq}")
            stored = row[HASH]
            if row_hash(row) != stored:
                return bad(seq, EDITED, f"event #{seq} was edited: its fields no longer match its hash")
            if row[PREV] != prev:
                return bad(
                    seq,
                    REORDERED,
                    f"event #{seq} does not follow #{seq - 1}: its prev_hash is not the hash of #{seq - 1} "
                    "(events reordered or replaced, or the chain forked)",
                )
            if anchor is not None and seq == anchor[0] and stored != anchor[1]:
                return bad(seq, EDITED, f"event #{seq} no longer has the anchored hash {anchor[1]}")
            prev, expected, checked = stored, expected + 1, checked + 1
    head_seq = expected - 1 if checked else None
    if anchor is not None and (head_seq or 0) < anchor[0]:
        return bad(
            (head_seq or 0) + 1,
            MISSING,
            f"the log ends at #{head_seq or 0} but the anchor names #{anchor[0]}: the newest events were removed",
        )
    message = f"{checked} events verified" + (f", head #{head_seq} {prev}" if checked else "")
    return VerifyResult(True, checked, None, "", message, head_seq, prev if checked else None)


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
