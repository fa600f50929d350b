"""The audit log: the one function that appends, and the hash chain.

`append_event` is the only writer of AuditEvent. Appends are serialized with a
transaction-level advisory lock on PostgreSQL (a write lock via an immediate
UPDATE-free insert on SQLite, whose single writer already serializes them), so
the sequence is gapless and the chain never forks. It runs in its own atomic
block: if the audit write fails, the exception propagates and the operation
being recorded must fail with it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.targets import mask_url

GENESIS_HASH = "0" * 64
# Arbitrary constant: the advisory-lock key that serializes audit appends.
AUDIT_LOCK_KEY = 0x0A0D17
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


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_payload(fields: dict[str, Any]) -> bytes:
    """Canonical serialization: JSON with sorted keys, no whitespace, UTC ISO times."""
    data = {name: fields.get(name) for name in HASHED_FIELDS}
    data["created_at"] = _iso(data["created_at"])
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def compute_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_payload(fields)).hexdigest()


def event_fields(event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in HASHED_FIELDS}


def _db_now() -> datetime:
    """The database clock, so event times do not depend on the app server's clock."""
    from django.utils import timezone

    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("SELECT clock_timestamp()")
            return cur.fetchone()[0]
    return timezone.now()


def _scrub(value: Any) -> Any:
    """Mask passwords in every string of the detail payload."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
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

    Raises whatever the database raises: callers must let it fail the
    operation (no unaudited rollbacks). Never put a secret in `message` or
    `detail`; URLs are masked here as a last line of defence.
    """
    if isinstance(from_revision, (list, tuple)):
        from_revision = ",".join(from_revision)
    if isinstance(to_revision, (list, tuple)):
        to_revision = ",".join(to_revision)
    detail = _scrub(json.loads(json.dumps(detail or {}, default=str)))
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [AUDIT_LOCK_KEY])
        last = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        fields: dict[str, Any] = {
            "seq": seq,
            "created_at": _db_now(),
            "actor_user_id": actor.user_id,
            "actor": actor.username[:150],
            "action": str(action),
            "outcome": str(outcome),
            "target_name": target or "",
            "request_id": request_id,
            "snapshot_id": snapshot_id,
            "from_revision": from_revision or "",
            "to_revision": to_revision or "",
            "message": mask_url(message),
            "detail": detail,
            "client_ip": actor.client_ip,
            "user_agent": (actor.user_agent or "")[:500],
            "prev_hash": prev_hash,
        }
        event = AuditEvent(**fields)
        event.hash = compute_hash(fields)
        event.save(force_insert=True)
    return event
