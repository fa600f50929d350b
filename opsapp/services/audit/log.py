"""The audit log: the one function that appends, and the hash chain.

`append_event` is the only writer of AuditEvent. Appends are serialized with a
transaction-level advisory lock on PostgreSQL (on SQLite, by taking the
database's single write lock before reading the last event), so the sequence
is gapless and the chain never forks. It runs in its own atomic block: if the
audit write fails, the exception propagates and the operation being recorded
must fail with it.

The hash of event N is SHA-256 over the canonical serialization of its
fields (HASHED_FIELDS, which include `prev_hash`, the hash of event N-1, and
the key id): JSON with sorted keys, no whitespace, UTF-8, `created_at` as a
UTC ISO 8601 string with microseconds. Its MAC is HMAC-SHA256 of that hash
under the audit key (keys.py), which lives outside the database. When the key
changes (the first keyed event after the plain chain, or a rotation), an
"audit key changed" event is appended first, MACed with the new key.

Values are normalized *before* hashing to exactly what the database gives
back (PostgreSQL's jsonb rewrites numbers and drops duplicate keys, inet
lower-cases IPv6), and every append re-reads its row and checks the hash, so
the log never holds an event that its own verifier would flag.
"""

from __future__ import annotations

import ipaddress
import json
import math
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.chain import GENESIS_HASH, compute_hash, compute_mac, stored_row_hashes
from opsapp.services.audit.keys import MacKey, current_mac_key
from opsapp.services.errors import AuditError
from opsapp.targets import mask_url

# Arbitrary constant: the advisory-lock key that serializes audit appends.
AUDIT_LOCK_KEY = 0x0A0D17


def _db_now() -> datetime:
    """The database clock, so event times do not depend on the app server's clock."""
    from django.utils import timezone

    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            return cur.fetchone()[0]
    return timezone.now()


def _clean_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; an audit write must not fail on it.
    return mask_url(value).replace("\x00", "\\0")


def _scrub(value: Any) -> Any:
    """Mask passwords in every string of the detail payload; make it storable as JSON."""
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, dict):
        return {_clean_text(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON (and jsonb) has no NaN or Infinity
    return value


def _normalize_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail exactly as it will be read back from the database."""
    text = json.dumps(detail, default=str, allow_nan=False)
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT %s::jsonb::text", [text])
            text = cur.fetchone()[0]
    return json.loads(text)


def _normalize_ip(value: str | None, detail: dict[str, Any]) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        # A garbage proxy header must not make the audited operation fail.
        detail["client_ip_raw"] = _clean_text(value)[:200]
        return None


def _fit(value: str, limit: int, key: str, detail: dict[str, Any]) -> str:
    """Keep a column within its length; the full value goes into detail."""
    value = _clean_text(value)
    if len(value) > limit:
        detail[key] = value
        return value[: limit - 1] + "…"
    return value


def append_event(
    *,
    action: AuditAction | str,
    outcome: AuditOutcome | str,
    actor: Actor,
    message: str = "",
    target: str | None = None,
    request_id: int | None = None,
    snapshot_id: int | None = None,
    from_revision: str | list[str] = "",
    to_revision: str | list[str] = "",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain and return it.

    Raises whatever the database raises (and AuditError if the stored row does
    not hash back, or when no audit key is configured): callers must let it fail the operation (no unaudited
    rollbacks). Never put a secret in `message` or `detail`; URLs are masked
    here as a last line of defence.
    """
    if isinstance(from_revision, (list, tuple)):
        from_revision = ",".join(from_revision)
    if isinstance(to_revision, (list, tuple)):
        to_revision = ",".join(to_revision)
    detail = _scrub(json.loads(json.dumps(detail or {}, default=str)))
    client_ip = _normalize_ip(actor.client_ip, detail)
    columns = {
        "actor": _fit(actor.username or "", 150, "actor_full", detail),
        "target_name": _fit(target or "", 100, "target_full", detail),
        "from_revision": _fit(from_revision or "", 500, "from_revision_full", detail),
        "to_revision": _fit(to_revision or "", 500, "to_revision_full", detail),
        "user_agent": _fit(actor.user_agent or "", 500, "user_agent_full", detail),
    }
    key = current_mac_key()
    with transaction.atomic():
        detail = _normalize_detail(detail)
        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])
            elif connection.vendor == "sqlite":
                # Take SQLite's write lock *before* reading the last event (a
                # deferred transaction would read first and collide later).
                # It matches no row, so the append-only trigger never fires.
                cur.execute("UPDATE opsapp_auditevent SET seq = seq WHERE 0")
        last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash", "key_id").first()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        if last is not None and last[2] != key.key_id:
            # The switch to MACs (or to a new key) is itself an audited event.
            previous = last[2] or None
            change = _insert(
                {
                    "seq": seq,
                    "actor_user_id": actor.user_id,
                    "action": str(AuditAction.AUDIT_KEY_CHANGED),
                    "outcome": str(AuditOutcome.INFO),
                    "request_id": None,
                    "snapshot_id": None,
                    "message": f"audit events are MACed with key {key.key_id} from #{seq} on"
                    + (f" (was {previous})" if previous else " (events before it have plain hashes)"),
                    "detail": {"key_id": key.key_id, "previous_key_id": previous},
                    "client_ip": client_ip,
                    "prev_hash": prev_hash,
                    **columns,
                    "target_name": "",
                    "from_revision": "",
                    "to_revision": "",
                },
                key,
            )
            seq, prev_hash = seq + 1, change.hash
        fields: dict[str, Any] = {
            "seq": seq,
            "actor_user_id": actor.user_id,
            "action": str(action),
            "outcome": str(outcome),
            "request_id": request_id,
            "snapshot_id": snapshot_id,
            "message": _clean_text(message),
            "detail": detail,
            "client_ip": client_ip,
            "prev_hash": prev_hash,
            **columns,
        }
        event = _insert(fields, key)
    return event


def _insert(fields: dict[str, Any], key: MacKey) -> AuditEvent:
    fields = {**fields, "created_at": _db_now(), "key_id": key.key_id}
    event = AuditEvent(**fields)
    event.hash = compute_hash(fields)
    event.mac = compute_mac(key.secret, event.hash)
    event.save(force_insert=True)
    _check_stored(event)
    return event


def _check_stored(event: AuditEvent) -> None:
    """Re-read the row the way the verifier does; refuse to commit a row that would not verify."""
    stored = stored_row_hashes(event.seq)
    if stored is None or stored[0] != stored[1] or stored[1] != event.hash:
        raise AuditError(f"audit event #{event.seq} does not hash back after writing; nothing was recorded")


def request_context(request: Any) -> dict[str, Any]:
    """The audit fields every event about one rollback request carries (for `append_event(**...)`)."""
    return {
        "target": request.target.name,
        "request_id": request.pk,
        "snapshot_id": request.snapshot_id,
        "from_revision": request.from_heads,
        "to_revision": request.to_revision,
    }
