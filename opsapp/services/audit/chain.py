"""The audit hash chain: the canonical serialization, the hash, and reading rows back.

The hash of event N is SHA-256 over the canonical serialization of its
fields (HASHED_FIELDS, which include `prev_hash`, the hash of event N-1):
JSON with sorted keys, no whitespace, UTF-8, `created_at` as a UTC ISO 8601
string with microseconds. docs/audit.md shows how to recompute it offline.

Both the writer (`log.append_event`, which re-reads every row it writes) and
the verifier (`verify.verify_chain`) read rows through `batches` here, so
they can never disagree on what a stored row hashes to.
"""

from __future__ import annotations

import hashlib
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
# What an export carries per event: the hashed fields plus the hash itself.
EXPORT_FIELDS = (*HASHED_FIELDS, "hash")

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
    return _encode(data).encode()


def compute_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_payload(fields)).hexdigest()


def event_fields(event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in HASHED_FIELDS}


CREATED = HASHED_FIELDS.index("created_at")
PREV = HASHED_FIELDS.index("prev_hash")
HASH = len(HASHED_FIELDS)
# Hot-loop locals.
_loads = json.loads
_sha256 = hashlib.sha256
_encode = canonical_encoder


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


def batches(after: int, batch_size: int) -> Iterator[list[tuple]]:
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
                (*row[:CREATED], iso_utc(row[CREATED]), *row[CREATED + 1 :])
                for row in AuditEvent.objects.filter(seq__gt=after).order_by("seq").values_list(*fields)[:batch_size]
            ]
            if not rows:
                return
            yield rows
            after = rows[-1][0]


def row_hash(row: tuple) -> str:
    """Recompute the hash of one row from _batches (zip stops before the stored hash)."""
    fields = dict(zip(HASHED_FIELDS, row, strict=False))
    detail = fields["detail"]
    if detail.__class__ is str:
        fields["detail"] = {} if detail == "{}" else _loads(detail)
    return _sha256(_encode(fields).encode()).hexdigest()


def stored_row_hashes(seq: int) -> tuple[str, str] | None:
    """(recomputed hash, stored hash) of one event, read the way verify_chain reads it."""
    for rows in batches(seq - 1, 1):
        row = rows[0]
        if row[0] != seq:
            return None
        return row_hash(row), row[HASH]
    return None


def current_head() -> tuple[int, str] | None:
    return AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
