"""The audit hash chain: the canonical serialization, the hash, the MAC, and reading rows back.

The hash of event N is SHA-256 over the canonical serialization of its
fields (HASHED_FIELDS, which include `prev_hash`, the hash of event N-1, and
`key_id` for keyed events): JSON with sorted keys, no whitespace, UTF-8,
`created_at` as a UTC ISO 8601 string with microseconds. Anyone can recompute
it (docs/audit.md), so the chain links are public.

The MAC of a keyed event is HMAC-SHA256(audit key, hash as ASCII hex). Only a
holder of the key (kept outside the database, see keys.py) can make one, so a
database-only attacker can neither append an event nor rehash the chain after
an edit. Events written before the key (key_id '') carry no MAC and keep their
plain hash; the first keyed event's hash covers their head through prev_hash.

Both the writer (`log.append_event`, which re-reads every row it writes) and
the verifier (`verify.verify_chain`) read rows through `batches` here, so
they can never disagree on what a stored row hashes to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.db import connection

from opsapp.models import AuditEvent

GENESIS_HASH = "0" * 64
HASHED_FIELDS = (
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
# What an export carries per event: the hashed fields, the key id, the hash and the MAC.
EXPORT_FIELDS = (*HASHED_FIELDS, "key_id", "hash", "mac")

# One reusable encoder: json.dumps builds a new one per call when given options.
canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_encode = canonical_encoder


def iso_utc(value: datetime | str) -> str:
    """`created_at` as hashed and exported: UTC, ISO 8601, microseconds."""
    if isinstance(value, str):
        return value
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_payload(fields: dict[str, Any]) -> bytes:
    """Canonical serialization: JSON with sorted keys, no whitespace, UTF-8, UTC ISO times."""
    data = {name: fields.get(name) for name in HASHED_FIELDS}
    data["created_at"] = iso_utc(data["created_at"])
    if fields.get("key_id"):  # absent for unkeyed events, so their hashes stay as they were
        data["key_id"] = fields["key_id"]
    return _encode(data).encode()


def compute_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_payload(fields)).hexdigest()


def compute_mac(secret: bytes, event_hash: str) -> str:
    return hmac.digest(secret, event_hash.encode("ascii"), "sha256").hex()


def event_fields(event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in (*HASHED_FIELDS, "key_id")}


# Row layout of `batches`: HASHED_FIELDS..., hash, key_id, mac.
ROW_FIELDS = (*HASHED_FIELDS, "hash", "key_id", "mac")
CREATED = HASHED_FIELDS.index("created_at")
DETAIL = HASHED_FIELDS.index("detail")
PREV = HASHED_FIELDS.index("prev_hash")
HASH = len(HASHED_FIELDS)
KEY_ID = HASH + 1
MAC = HASH + 2
# Hot-loop locals.
_loads = json.loads
_sha256 = hashlib.sha256
_encode = canonical_encoder
_string = json.encoder.encode_basestring  # what the canonical encoder uses for str (ensure_ascii=False)


def pg_column(name: str) -> str:
    """A column as PostgreSQL should hand it to the chain: created_at as iso_utc() prints it, the bare address."""
    if name == "created_at":
        # Exactly iso_utc(): 2026-01-31T12:00:00.123456+00:00
        return """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
    if name == "client_ip":
        return "host(client_ip)"
    return connection.ops.quote_name(name)


def _pg_select() -> str:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    columns = [pg_column(name) for name in ROW_FIELDS]
    return f"SELECT {', '.join(columns)} FROM {table} WHERE seq > %s ORDER BY seq LIMIT %s"


def batches(after: int, batch_size: int) -> Iterator[list[tuple]]:
    """Rows as tuples (ROW_FIELDS), created_at a string, detail still raw."""
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
        fields = ROW_FIELDS
        while True:
            rows = [
                (*row[:CREATED], iso_utc(row[CREATED]), *row[CREATED + 1 :])
                for row in AuditEvent.objects.filter(seq__gt=after).order_by("seq").values_list(*fields)[:batch_size]
            ]
            if not rows:
                return
            yield rows
            after = rows[-1][0]


def _text(value: str | None) -> str:
    return "null" if value is None else _string(value)


def _number(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def row_payload(row: tuple) -> bytes:
    """canonical_payload() of one row of `batches`, built without a dict or the generic encoder.

    The keys are known and sorted in advance, so only `detail` goes through
    the JSON encoder (and not even it when empty). tests/test_audit_keyed.py
    checks that both give the same bytes.
    """
    (seq, created, user_id, actor, action, outcome, target, request_id, snapshot_id) = row[:9]
    (from_rev, to_rev, message, detail, client_ip, user_agent, prev) = row[9:HASH]
    if detail.__class__ is str:
        detail = "{}" if detail == "{}" else _encode(_loads(detail))
    else:
        detail = _encode(detail)
    key_id = row[KEY_ID]
    return (
        f'{{"action":{_string(action)},"actor":{_string(actor)},"actor_user_id":{_number(user_id)},'
        f'"client_ip":{_text(client_ip)},"created_at":{_string(created)},"detail":{detail},'
        f'"from_revision":{_string(from_rev)},'
        + (f'"key_id":{_string(key_id)},' if key_id else "")
        + f'"message":{_string(message)},"outcome":{_string(outcome)},"prev_hash":{_string(prev)},'
        f'"request_id":{_number(request_id)},"seq":{_number(seq)},"snapshot_id":{_number(snapshot_id)},'
        f'"target_name":{_string(target)},"to_revision":{_string(to_rev)},"user_agent":{_string(user_agent)}}}'
    ).encode()


def row_hash(row: tuple) -> str:
    """Recompute the hash of one row from `batches`."""
    return _sha256(row_payload(row)).hexdigest()


def stored_row_hashes(seq: int) -> tuple[str, str] | None:
    """(recomputed hash, stored hash) of one event, read the way verify_chain reads it."""
    for rows in batches(seq - 1, 1):
        row = rows[0]
        if row[0] != seq:
            return None
        return row_hash(row), row[HASH]
    return None


def stored_row(seq: int) -> tuple | None:
    """One event as a `batches` row, or None."""
    for rows in batches(seq - 1, 1):
        return rows[0] if rows[0][0] == seq else None
    return None


def current_head() -> tuple[int, str] | None:
    return AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
