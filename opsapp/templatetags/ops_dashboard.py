"""The administrator's daily view on the admin index: `{% ops_dashboard %}`.

Shows, to whoever may view them: the fleet matrix (every target against its
state, with its latest verified snapshot's age and open requests, filtered
by tag and state; opsapp.services.fleet.matrix), the cron jobs that need
attention, the open rollback requests with their gate status, and the
latest audit events. Reads the console's own tables only (cron keeps
target state fresh); the gate status of an open request is a summary of its
stored fields, as on the request list (the live checklist is on the request page).
"""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils.http import urlencode

from opsapp.models import AuditEvent, RollbackRequest
from opsapp.models.rollback import OPEN_STATUSES

register = template.Library()

LATEST_EVENTS = 10


def _url(name: str, *args: Any) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def compact_age(seconds: float | None) -> str:
    """'42 min', '5 h', '3 d': short enough for a 500-row matrix ('' for None)."""
    if seconds is None:
        return ""
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def fleet_context(request) -> dict[str, Any]:
    """The fleet matrix with its filters (?fleet_state=behind, ?fleet_tag=region=eu) read from the query."""
    from opsapp.services.fleet.matrix import MATRIX_STATES, fleet_matrix, parse_tag

    params = getattr(request, "GET", {})
    problems = []
    state = params.get("fleet_state") or None
    if state is not None and state not in MATRIX_STATES:
        problems.append(f"Unknown state filter {state!r}: showing every state.")
        state = None
    tag_text = params.get("fleet_tag") or None
    tag = parse_tag(tag_text) if tag_text else None
    if tag_text and tag is None:
        problems.append(f"Tag filter {tag_text!r} must look like key=value: showing every tag.")
        tag_text = None
    matrix = fleet_matrix(tag=tag, state=state)

    def link(**changes: str | None) -> str:
        query = {"fleet_state": state, "fleet_tag": tag_text, **changes}
        return "?" + urlencode({k: v for k, v in query.items() if v}) if any(query.values()) else "?"

    max_age = settings.OPS_SNAPSHOT_MAX_AGE_SECONDS
    rows = [
        {
            "row": row,
            "url": _url("admin:opsapp_target_change", row.pk) if row.pk else None,
            "snapshot_url": _url("admin:opsapp_snapshot_change", row.snapshot_id) if row.snapshot_id else None,
            "snapshot_old": row.snapshot_age_seconds is not None and row.snapshot_age_seconds > max_age,
            "snapshot_age": compact_age(row.snapshot_age_seconds),
            "cells": [(column, row.matrix_state == column) for column in MATRIX_STATES],
        }
        for row in matrix.rows
    ]
    return {
        "rows": rows,
        "total": matrix.total,
        "shown": len(rows),
        "columns": [
            {"key": key, "label": label, "count": matrix.counts[key], "url": link(fleet_state=key), "on": key == state}
            for key, label in MATRIX_STATES.items()
        ],
        "tags": [
            {
                "key": key,
                "values": [{"value": v, "url": link(fleet_tag=f"{key}={v}"), "on": tag == (key, v)} for v in values],
            }
            for key, values in matrix.tags.items()
        ],
        "filtered": bool(state or tag),
        "tag_filtered": tag is not None,
        "all_states_url": link(fleet_state=None),
        "all_tags_url": link(fleet_tag=None),
        "problems": problems,
    }


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
        "fleet": fleet_context(request) if user.has_perm("opsapp.view_target") else None,
        "requests": request_rows() if user.has_perm("opsapp.view_rollbackrequest") else None,
        "events": event_rows() if user.has_perm("opsapp.view_auditevent") else None,
    }
    data["any"] = any(value is not None for value in data.values())
    return {"dashboard": data}
