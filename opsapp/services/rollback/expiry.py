"""When a pending rollback request goes stale, and expiring it (gate 1's clock).

Both the gate and code issuing need this; it lives apart so that neither
imports the other.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from opsapp.models import RollbackRequest, RollbackStatus


def request_ttl_seconds() -> int:
    """How long a request may stay pending (OPS_REQUEST_TTL_SECONDS, default 24 h)."""
    return int(getattr(settings, "OPS_REQUEST_TTL_SECONDS", 86400))


def stale_message(request: RollbackRequest) -> str | None:
    """The expiry message when `request` is pending longer than the request TTL, else None."""
    if request.status != RollbackStatus.PENDING or request.created_at is None:
        return None
    age, limit = (timezone.now() - request.created_at).total_seconds(), request_ttl_seconds()
    if age <= limit:
        return None
    return (
        f"Request #{request.pk} expired: it has been pending for {duration_text(age)}, longer than the limit of "
        f"{duration_text(limit)} (OPS_REQUEST_TTL_SECONDS); create a new request."
    )


def expire_if_stale(request: RollbackRequest) -> str | None:
    """Mark a stale pending request `expired` (its code dies); return the expiry message, or None if not stale.

    The caller audits (a gate refusal, or the refused code issue).
    """
    message = stale_message(request)
    if message is None:
        return None
    RollbackRequest.objects.filter(pk=request.pk, status=RollbackStatus.PENDING).update(
        status=RollbackStatus.EXPIRED, code_hash=""
    )
    request.refresh_from_db(fields=["status", "code_hash"])
    return message


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
