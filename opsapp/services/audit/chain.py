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
the verifier (`verify.verify_chain`) read rows through `payload_rows` here,
so they can never disagree on what a stored row hashes to. On PostgreSQL it
streams `COPY (SELECT ...) TO STDOUT` and builds each payload from the text
line (the verifier's hot path, ~100,000 events/s); elsewhere it serializes
`batches` rows with `row_payload`. tests/test_audit_canonical.py checks both
against `canonical_payload` on generated events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction

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


def mac_function(secret: bytes) -> Callable[[str], str]:
    """compute_mac(secret, ·) for many hashes: HMAC-SHA256 (RFC 2104) with the two padded keys hashed once.

    Per event that leaves two copies of a SHA-256 state and two short updates,
    a third of hmac.digest's cost (which redoes the key schedule every call).
    """
    block = (hashlib.sha256(secret).digest() if len(secret) > 64 else secret).ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(event_hash: str) -> str:
        step = inner.copy()
        step.update(event_hash.encode())
        last = outer.copy()
        last.update(step.digest())
        return last.hexdigest()

    return mac


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
# The canonical encoder's own C encoder, built once: JSONEncoder.encode builds one per call (most of its
# cost on a small detail). Same arguments as JSONEncoder.iterencode passes, bar the cycle check (`markers`),
# which parsed JSON cannot need. None without the C accelerator: then the encoder itself.
_c_encoder = (
    json.encoder.c_make_encoder(None, canonical_encoder.__self__.default, _string, None, ":", ",", True, False, True)
    if json.encoder.c_make_encoder is not None
    else None
)
# json.loads minus its whitespace skipping: (value, end index); StopIteration or JSONDecodeError when malformed.
_scan = json.JSONDecoder().scan_once


def canonical_detail(detail: Any) -> str:
    """The canonical JSON of `detail`, given as a value or as stored JSON text (parsed, then re-serialized)."""
    if detail.__class__ is not str:
        return _encode(detail)
    if detail == "{}":
        return detail
    if _c_encoder is not None:
        try:
            value, end = _scan(detail, 0)
        except (StopIteration, ValueError):
            end = -1
        if end == len(detail):
            return "".join(_c_encoder(value, 0))
    # Surrounding whitespace, malformed text or no C accelerator: json.loads decides (and raises as it raises).
    return _encode(_loads(detail))


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


# ------------------------------------------------------------- the stream (PostgreSQL)
# What payload_rows yields per event: (seq, canonical payload, prev_hash, hash, key_id, mac).
PayloadRow = tuple[int, bytes, str, str, str, str]
_NUMBERS = ("actor_user_id", "request_id", "snapshot_id")
_COPY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_COPY_CHARS = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _stream_column(name: str) -> str:
    """A ROW_FIELDS column as the stream reads it: a nullable one already as its JSON token."""
    if name in _NUMBERS:
        # int8 prints as Python's str(int) does.
        return f"COALESCE({connection.ops.quote_name(name)}::text, 'null')"
    if name == "client_ip":
        # host() prints hex digits, dots and colons only: nothing a JSON string escapes.
        return """COALESCE('"' || host(client_ip) || '"', 'null')"""
    return pg_column(name)  # detail: jsonb prints as its JSON text


def _copy_unescape(field: str) -> str:
    """A field of COPY's text format as stored (COPY escapes backslash, tab, newline and the like)."""
    return _COPY_ESCAPE.sub(lambda m: _COPY_CHARS.get(m[1], m[1]), field)


def _stream_row(line: str) -> PayloadRow:
    """One line of the COPY stream as a PayloadRow; the payload is canonical_payload() of the event.

    Nullable columns arrive as their JSON tokens, so a line holds a backslash
    only when a value does (rare), and only then is it unescaped field by field.
    """
    fields = line.split("\t")
    if "\\" in line:
        fields = [_copy_unescape(field) for field in fields]
    (seq, created, user_id, actor, action, outcome, target, request_id, snapshot_id) = fields[:9]
    (from_rev, to_rev, message, detail, client_ip, user_agent, prev, stored, key_id, mac) = fields[9:]
    payload = (
        f'{{"action":{_string(action)},"actor":{_string(actor)},"actor_user_id":{user_id},'
        f'"client_ip":{client_ip},"created_at":{_string(created)},"detail":{canonical_detail(detail)},'
        f'"from_revision":{_string(from_rev)},'
        + (f'"key_id":{_string(key_id)},' if key_id else "")
        + f'"message":{_string(message)},"outcome":{_string(outcome)},"prev_hash":{_string(prev)},'
        f'"request_id":{request_id},"seq":{seq},"snapshot_id":{snapshot_id},'
        f'"target_name":{_string(target)},"to_revision":{_string(to_rev)},"user_agent":{_string(user_agent)}}}'
    )
    return int(seq), payload.encode(), prev, stored, key_id, mac


def payload_rows(after: int = 0, batch_size: int = 5000, *, limit: int | None = None) -> Iterator[PayloadRow]:
    """Every event after seq `after` (at most `limit`), oldest first, as PayloadRow.

    On PostgreSQL one `COPY (SELECT ...) TO STDOUT`, read while the server is
    still sending, with no per-column type conversion, `batch_size` rows
    decoded at a time. One row at a time, because a batch of tuples kept alive
    costs more in garbage collection than the generator does. Close the
    iterator (contextlib.closing) when stopping early: that cancels the COPY
    inside its own savepoint, which leaves the connection usable.
    """
    if connection.vendor != "postgresql":
        for rows in batches(after, batch_size if limit is None else min(batch_size, limit)):
            for row in rows:
                yield row[0], row_payload(row), row[PREV], row[HASH], row[KEY_ID], row[MAC]
            if limit is not None:
                return
        return
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    columns = ", ".join(_stream_column(name) for name in ROW_FIELDS)
    bound = "" if limit is None else f" LIMIT {int(limit)}"
    sql = f"COPY (SELECT {columns} FROM {table} WHERE seq > {int(after)} ORDER BY seq{bound}) TO STDOUT"
    with transaction.atomic(), connection.cursor() as cursor, cursor.copy(sql) as copy:
        pending: list[bytes] = []
        for data in copy:  # one message per row, but only a newline ends a row
            pending.append(bytes(data))
            if len(pending) >= batch_size:
                text = b"".join(pending)
                end = text.rfind(b"\n") + 1
                pending = [text[end:]]
                for line in text[:end].decode().split("\n")[:-1]:
                    yield _stream_row(line)
        for line in b"".join(pending).decode().split("\n")[:-1]:
            yield _stream_row(line)


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
    detail = canonical_detail(detail)
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
    rows = list(payload_rows(seq - 1, 1, limit=1))
    if not rows or rows[0][0] != seq:
        return None
    return _sha256(rows[0][1]).hexdigest(), rows[0][3]


def stored_row(seq: int) -> tuple | None:
    """One event as a `batches` row, or None."""
    for rows in batches(seq - 1, 1):
        return rows[0] if rows[0][0] == seq else None
    return None


def current_head() -> tuple[int, str] | None:
    return AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
