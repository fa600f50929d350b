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

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from django.db import connection

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit import GENESIS_HASH, HASHED_FIELDS, append_event, canonical_encoder, iso_utc

EDITED = "edited"
MISSING = "missing"
REORDERED = "reordered"

_CREATED = HASHED_FIELDS.index("created_at")
_PREV = HASHED_FIELDS.index("prev_hash")
_HASH = len(HASHED_FIELDS)
# Hot-loop locals.
_loads = json.loads
_sha256 = hashlib.sha256
_encode = canonical_encoder


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


def _pg_select() -> str:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    columns = []
    for name in (*HASHED_FIELDS, "hash"):
        if name == "created_at":
            # Exactly iso_utc(): 2026-01-31T12:00:00.123456+00:00
            columns.append("""to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""")
        elif name == "client_ip":
            columns.append("host(client_ip)")
        else:
            columns.append(connection.ops.quote_name(name))
    return f"SELECT {', '.join(columns)} FROM {table} WHERE seq > %s ORDER BY seq LIMIT %s"


def _batches(after: int, batch_size: int) -> Iterator[list[tuple]]:
    """Rows as tuples (HASHED_FIELDS..., hash), created_at a string, detail still raw."""
    if connection.vendor == "postgresql":
        sql = _pg_select()
        while True:
            with connection.cursor() as cur:
                cur.execute(sql, [after, batch_size])
                rows = cur.fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1][0]
    else:
        fields = (*HASHED_FIELDS, "hash")
        while True:
            rows = [
                (*row[:_CREATED], iso_utc(row[_CREATED]), *row[_CREATED + 1 :])
                for row in AuditEvent.objects.filter(seq__gt=after).order_by("seq").values_list(*fields)[:batch_size]
            ]
            if not rows:
                return
            yield rows
            after = rows[-1][0]


def _row_hash(row: tuple) -> str:
    """Recompute the hash of one row from _batches (zip stops before the stored hash)."""
    fields = dict(zip(HASHED_FIELDS, row, strict=False))
    detail = fields["detail"]
    if detail.__class__ is str:
        fields["detail"] = {} if detail == "{}" else _loads(detail)
    return _sha256(_encode(fields).encode()).hexdigest()


def stored_row_hashes(seq: int) -> tuple[str, str] | None:
    """(recomputed hash, stored hash) of one event, read the way verify_chain reads it."""
    for rows in _batches(seq - 1, 1):
        row = rows[0]
        if row[0] != seq:
            return None
        return _row_hash(row), row[_HASH]
    return None


def current_head() -> tuple[int, str] | None:
    return AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()


def verify_chain(*, batch_size: int = 5000, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Recompute every hash and link, oldest first; stop at the first problem.

    `anchor` is a (seq, hash) pair recorded outside the database earlier
    (`--print-head`): that event must still exist with that hash.
    """
    expected, prev, checked = 1, GENESIS_HASH, 0

    def bad(seq: int, problem: str, message: str) -> VerifyResult:
        head = current_head()
        return VerifyResult(False, checked, seq, problem, message, *(head or (None, None)))

    for rows in _batches(0, batch_size):
        for row in rows:
            seq = row[0]
            if seq != expected:
                gap = f"#{expected}" if seq == expected + 1 else f"#{expected} to #{seq - 1}"
                return bad(expected, MISSING, f"event {gap} missing: the chain jumps from #{expected - 1} to #{seq}")
            stored = row[_HASH]
            if _row_hash(row) != stored:
                return bad(seq, EDITED, f"event #{seq} was edited: its fields no longer match its hash")
            if row[_PREV] != prev:
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
