"""The administrator's daily view on the admin index: `{% ops_dashboard %}`.

Shows, to whoever may view them: the fleet matrix (every target against its
state, with its latest verified snapshot's age and open requests, filtered
by tag and state; opsapp.services.fleet.matrix), the cron jobs that need
attention, the open rollback requests with their gate status, the running
and queued operations, and the latest audit events. Reads the console's own tables only (cron keeps
target state fresh); the gate status of an open request is a summary of its
stored fields, as on the request list (the live checklist is on the request page).
"""

from __future__ import annotations

from html import escape
from typing import Any

from django import template
from django.conf import settings
from django.urls import NoReverseMatch, reverse
from django.utils.http import urlencode
from django.utils.safestring import mark_safe

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


def _url_pattern(name: str) -> str | None:
    """reverse() once with a placeholder id: 500 reverse() calls cost more than the whole query."""
    url = _url(name, 999999999)
    return url.replace("999999999", "{}") if url else None


def _state_cells(row, columns: dict[str, str]) -> str:
    title = escape(row.state_label + (f": {row.state_detail[:300]}" if row.state_detail else ""))
    cells = []
    for column in columns:
        if column != row.matrix_state:
            cells.append('<td class="fleet-cell"></td>')
            continue
        text = {"behind": f"behind {row.behind}", "unknown": escape(row.state_label)}.get(column, "&#x25CF;")
        cells.append(f'<td class="fleet-cell here state-{column}" title="{title}">{text}</td>')
    return "".join(cells)


def _heads_html(heads: tuple[str, ...]) -> str:
    return ", ".join(f"<code>{escape(h[:12])}{'…' if len(h) > 12 else ''}</code>" for h in heads) or "-"


def _tags_html(tags: tuple[tuple[str, str], ...]) -> str:
    return " ".join(f'<span class="fleet-tag">{escape(str(k))}={escape(str(v))}</span>' for k, v in sorted(tags))


def render_fleet_rows(rows: list, columns: dict[str, str]) -> str:
    """The matrix's <tr>s, built in Python rather than in the template language.

    Why: at 500 targets the template engine spent most of the index's time on
    these rows (about 60 nodes each). Every value is escaped with the standard
    library's `html.escape` (what Django's `escape` calls, without its lazy-string
    wrapper). A fleet shares a few states, heads and tag sets: each distinct one
    is rendered once per page, not once per target.
    """
    max_age = settings.OPS_SNAPSHOT_MAX_AGE_SECONDS
    requests_url = _url("admin:opsapp_rollbackrequest_changelist")
    target_url = _url_pattern("admin:opsapp_target_change")
    snapshot_url = _url_pattern("admin:opsapp_snapshot_change")
    cells_memo: dict[tuple, str] = {}
    heads_memo: dict[tuple, str] = {}
    tags_memo: dict[tuple, str] = {}
    html = []
    for row in rows:
        name = escape(row.name)
        if row.pk and target_url:
            name = f'<a href="{target_url.format(row.pk)}">{name}</a>'
        key = (row.matrix_state, row.behind, row.state_label, row.state_detail)
        cells = cells_memo.get(key)
        if cells is None:
            cells = cells_memo[key] = _state_cells(row, columns)
        key = tuple(row.heads)
        heads = heads_memo.get(key)
        if heads is None:
            heads = heads_memo[key] = _heads_html(key)
        if row.snapshot_id:
            ref = f"#{row.snapshot_id}"
            if snapshot_url:
                ref = f'<a href="{snapshot_url.format(row.snapshot_id)}">{ref}</a>'
            old = "old" if row.snapshot_age_seconds > max_age else ""
            taken = row.snapshot_at.strftime("%Y-%m-%d %H:%M")
            snapshot = (
                f'{ref}, <span class="{old}" title="taken {taken}">{compact_age(row.snapshot_age_seconds)} old</span>'
            )
        else:
            snapshot = '<span class="old">none</span>'
        requests = str(row.open_requests)
        if row.open_requests and requests_url:
            requests = f'<a href="{requests_url}?target__id__exact={row.pk}">{row.open_requests}</a>'
        key = tuple(row.tags.items())
        tags = tags_memo.get(key)
        if tags is None:
            tags = tags_memo[key] = _tags_html(key)
        html.append(
            f'<tr class="fleet-row fleet-state-{row.matrix_state}"><th>{name}</th>{cells}'
            f'<td>{heads}</td><td>{snapshot}</td><td>{requests}</td><td class="fleet-tags">{tags}</td></tr>\n'
        )
    return mark_safe("".join(html))  # noqa: S308 - built above from escaped values


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

    rows_html = render_fleet_rows(matrix.rows, MATRIX_STATES)
    return {
        "rows_html": rows_html,
        "total": matrix.total,
        "shown": len(matrix.rows),
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


def operation_rows() -> list[dict[str, Any]]:
    """Running, then queued operations (at most 50), with their progress in words."""
    from opsapp.admin.operation import progress_text
    from opsapp.services.operations.queue import active_operations

    return [
        {"obj": op, "url": _url("admin:opsapp_operation_change", op.pk), "progress": progress_text(op)}
        for op in active_operations()[:50]
    ]


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
        "operations": operation_rows() if user.has_perm("opsapp.view_operation") else None,
        "events": event_rows() if user.has_perm("opsapp.view_auditevent") else None,
    }
    data["any"] = any(value is not None for value in data.values())
    return {"dashboard": data}


SIDEBAR_ROWS = 8


@register.inclusion_tag("admin/opsapp/sidebar.html", takes_context=True)
def ops_sidebar(context) -> dict[str, Any]:
    """The index's sidebar, in place of Django's "Recent actions" (LogEntry, never written here).

    "Your recent actions": this user's own audit events (everyone sees their own; linked only
    for those who may view the audit log). "Finished operations": the latest ones that ended,
    since the dashboard already lists the running and queued ones.
    """
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_active or not user.is_staff:
        return {"sidebar": None}
    may_view_events = user.has_perm("opsapp.view_auditevent")
    mine = [
        {"obj": ev, "url": _url("admin:opsapp_auditevent_change", ev.pk) if may_view_events else None}
        for ev in AuditEvent.objects.filter(actor_user_id=user.pk).order_by("-seq")[:SIDEBAR_ROWS]
    ]
    finished = None
    if user.has_perm("opsapp.view_operation"):
        from opsapp.models import Operation
        from opsapp.models.operation import ACTIVE_STATES

        finished = [
            {"obj": op, "url": _url("admin:opsapp_operation_change", op.pk)}
            for op in Operation.objects.exclude(state__in=ACTIVE_STATES)
            .select_related("target")
            .order_by("-finished_at", "-pk")[:SIDEBAR_ROWS]
        ]
    return {
        "sidebar": {
            "mine": mine,
            "finished": finished,
            "audit_url": _url("admin:opsapp_auditevent_changelist") if may_view_events else None,
            "operations_url": _url("admin:opsapp_operation_changelist") if finished is not None else None,
        }
    }
