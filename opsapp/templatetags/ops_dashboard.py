"""The administrator's daily view on the admin index: `{% ops_dashboard %}`.

Shows, to whoever may view them: every target's state with its latest
verified snapshot's age, the open rollback requests with their gate status,
and the latest audit events. Reads the console's own tables only (cron keeps
target state fresh); the gate status of an open request is a summary of its
stored fields, as on the request list (the live checklist is on the request page).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import template
from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from opsapp.models import AuditEvent, RollbackRequest, Target
from opsapp.models.rollback import OPEN_STATUSES
from opsapp.models.target import TargetState
from opsapp.targets import configured_names

register = template.Library()

LATEST_EVENTS = 10


def _url(name: str, *args: Any) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def target_rows() -> list[dict[str, Any]]:
    """One row per configured target (a target cron has not synced yet still shows)."""
    from opsapp.services.snapshots.lifecycle import latest_verified_snapshot

    by_name = {t.name: t for t in Target.objects.all()}
    max_age = timedelta(seconds=settings.OPS_SNAPSHOT_MAX_AGE_SECONDS)
    now = timezone.now()
    rows = []
    for name in sorted(set(configured_names()) | set(by_name)):
        target = by_name.get(name)
        snapshot = latest_verified_snapshot(target) if target else None
        rows.append(
            {
                "name": name,
                "url": _url("admin:opsapp_target_change", target.pk) if target else None,
                "state": target.state if target else TargetState.NOT_SYNCED,
                "state_label": target.get_state_display() if target else TargetState.NOT_SYNCED.label,
                "state_detail": target.state_detail if target else "",
                "heads": target.current_heads if target else [],
                "pending": target.pending_count if target else 0,
                "synced": target.last_synced_at if target else None,
                "snapshot": snapshot,
                "snapshot_url": _url("admin:opsapp_snapshot_change", snapshot.pk) if snapshot else None,
                "snapshot_old": bool(snapshot and snapshot.started_at and now - snapshot.started_at > max_age),
            }
        )
    return rows


def request_rows() -> list[dict[str, Any]]:
    """Open requests with a gate summary from stored fields only (never a connection to a target)."""
    from opsapp.services.rollback.gate import stored_summary

    rows = []
    for req in RollbackRequest.objects.filter(status__in=OPEN_STATUSES).select_related("target", "snapshot")[:50]:
        gates = stored_summary(req)
        rows.append({"obj": req, "url": _url("admin:opsapp_rollbackrequest_change", req.pk), "gates": gates})
    return rows


def event_rows() -> list[dict[str, Any]]:
    return [
        {"obj": ev, "url": _url("admin:opsapp_auditevent_change", ev.pk)}
        for ev in AuditEvent.objects.order_by("-seq")[:LATEST_EVENTS]
    ]


def cron_rows() -> dict[str, Any]:
    """The cron jobs that need attention (overdue, failing, never ran), and how many are fine."""
    from opsapp.services.cron.runs import cron_status

    jobs = cron_status()
    return {"problems": [job for job in jobs if job.is_problem], "ok_count": sum(not job.is_problem for job in jobs)}


@register.inclusion_tag("admin/opsapp/dashboard.html", takes_context=True)
def ops_dashboard(context) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_active or not user.is_staff:
        return {"dashboard": {"any": False}}
    data: dict[str, Any] = {
        # Cron health: whoever sees targets sees whether the jobs that keep them fresh still run.
        "cron": cron_rows() if user.has_perm("opsapp.view_target") else None,
        "targets": target_rows() if user.has_perm("opsapp.view_target") else None,
        "requests": request_rows() if user.has_perm("opsapp.view_rollbackrequest") else None,
        "events": event_rows() if user.has_perm("opsapp.view_auditevent") else None,
    }
    data["any"] = any(value is not None for value in data.values())
    return {"dashboard": data}
