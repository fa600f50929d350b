"""The auditor's view of the audit log: read-only for everyone, built for a big table.

- Nobody adds, changes or deletes here, superusers included (the database
  triggers refuse it anyway); there are no bulk actions.
- No full COUNT(*) per page view: `show_full_result_count = False` and a
  paginator that estimates big counts (pg_class.reltuples unfiltered, a
  bounded count then EXPLAIN's estimate when filtered).
- Filter choices for target and actor come from a loose index scan (one
  index probe per distinct value), not SELECT DISTINCT over the table.
- The list starts with the last recorded `verify_audit_log` result and
  offers CSV / JSON Lines exports of exactly the rows the current filters
  show (permission `opsapp.export_auditevent`).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    StreamingHttpResponse,
)
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from opsapp.models import AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.export import CONTENT_TYPES, FORMATS, iter_export, start_export
from opsapp.services.audit.verify import last_verification
from opsapp.services.cron.runs import job_status

EXPORT_PERMISSION = "opsapp.export_auditevent"
# Below this many rows an exact count is cheap; above, estimate.
EXACT_COUNT_LIMIT = 20_000
# A search filters by scanning text: counting 20,000 matches of a common word reads ~100,000 rows through
# UPPER(...) LIKE, most of a second at a million events. Searches count exactly up to this many, then estimate.
SEARCH_EXACT_COUNT_LIMIT = 1_000
FILTER_CHOICES_LIMIT = 200


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts a big table in full.

    Unfiltered: the planner's row estimate (pg_class.reltuples) once it is
    large. Filtered: the planner's estimate (EXPLAIN) when it is far beyond
    the exact bound, otherwise an exact count bounded by a LIMIT (an index-only
    scan of the filtered column's index once VACUUM has set the visibility
    map), and the estimate beyond that. An estimate can leave the last page short or empty;
    the date hierarchy and filters reach every event. The count is left on the
    queryset as `count_hint` for the date hierarchy (AuditEventQuerySet).
    """

    exact_limit = EXACT_COUNT_LIMIT
    # Filters on indexed columns have good estimates (column statistics); a search's are rough guesses.
    trust_estimate = True

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if connection.vendor != "postgresql":
            return super().count
        estimate = None
        if not qs.query.where:
            estimate = _reltuples(qs.model._meta.db_table)
            if estimate >= self.exact_limit:
                return _hint(qs, estimate)
        elif self.trust_estimate:
            estimate = _explain_rows(qs)
            if estimate >= 2 * self.exact_limit:  # far beyond the bound: counting would only confirm it
                return _hint(qs, estimate)
        bounded = qs.order_by()[: self.exact_limit + 1].count()
        if bounded <= self.exact_limit:
            return _hint(qs, bounded)
        return _hint(qs, max(bounded, _explain_rows(qs) if estimate is None else estimate))


class SearchCountPaginator(EstimatedCountPaginator):
    exact_limit = SEARCH_EXACT_COUNT_LIMIT
    trust_estimate = False


def _hint(qs, count: int) -> int:
    qs.count_hint = count
    return count


def _reltuples(table: str) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else -1


def _explain_rows(qs) -> int:
    sql, params = qs.order_by().query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cur.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def distinct_values(column: str, limit: int = FILTER_CHOICES_LIMIT) -> list[str]:
    """Distinct non-empty values of an indexed column, cheaply (index skip scan on PostgreSQL)."""
    return distinct_values_of((column,), limit)[column]


def distinct_values_of(columns: tuple[str, ...], limit: int = FILTER_CHOICES_LIMIT) -> dict[str, list[str]]:
    """distinct_values() of several columns in one query (one loose index scan per column)."""
    if connection.vendor != "postgresql":
        return {
            column: list(
                AuditEvent.objects.exclude(**{column: ""})
                .order_by(column)
                .values_list(column, flat=True)
                .distinct()[:limit]
            )
            for column in columns
        }
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    scans, picks = [], []
    for n, column in enumerate(columns):
        col = connection.ops.quote_name(column)
        scans.append(
            f"""v{n}(value) AS (
                (SELECT {col} FROM {table} WHERE {col} > '' ORDER BY {col} LIMIT 1)
                UNION ALL
                SELECT (SELECT {col} FROM {table} WHERE {col} > v{n}.value ORDER BY {col} LIMIT 1)
                FROM v{n} WHERE v{n}.value IS NOT NULL
            )"""
        )
        picks.append(f"(SELECT {n}, value FROM v{n} WHERE value IS NOT NULL LIMIT %s)")
    sql = f"WITH RECURSIVE {', '.join(scans)} {' UNION ALL '.join(picks)}"
    found: dict[str, list[str]] = {column: [] for column in columns}
    with connection.cursor() as cur:
        cur.execute(sql, [limit] * len(columns))
        for n, value in cur.fetchall():
            found[columns[n]].append(value)
    return found


class _ColumnFilter(admin.SimpleListFilter):
    column = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        # Both column filters' choices come from one query per request.
        choices = getattr(request, "_audit_filter_choices", None)
        if choices is None:
            choices = request._audit_filter_choices = distinct_values_of(FILTER_COLUMNS)
        return [(value, value) for value in choices[self.column]]

    def queryset(self, request: HttpRequest, queryset):
        value = self.value()
        return queryset.filter(**{self.column: value}) if value else queryset


class TargetFilter(_ColumnFilter):
    title = "target"
    parameter_name = column = "target_name"


class ActorFilter(_ColumnFilter):
    title = "actor"
    parameter_name = column = "actor"


FILTER_COLUMNS = (TargetFilter.column, ActorFilter.column)


def admin_link(model_name: str, pk: int | None) -> str:
    """Link to another opsapp admin page by id; plain '#id' when that page is not registered."""
    if pk is None:
        return "—"
    try:
        url = reverse(f"admin:opsapp_{model_name}_change", args=[pk])
    except NoReverseMatch:
        return f"#{pk}"
    return format_html('<a href="{}">#{}</a>', url, pk)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = (
        "seq",
        "time",
        "actor",
        "action",
        "outcome",
        "target_name",
        "request_link",
        "snapshot_link",
        "short_message",
    )
    list_display_links = ("seq",)
    # action/outcome/target/actor each have an index leading with the column (see the model).
    list_filter = ("action", "outcome", TargetFilter, ActorFilter)
    date_hierarchy = "created_at"
    search_fields = ("message", "from_revision", "to_revision")
    search_help_text = "Words in the message or a revision id; a number also finds that rollback request id."
    ordering = ("-seq",)  # the unique index on seq
    list_per_page = 100
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    actions = None
    fieldsets = (
        (None, {"fields": ("seq", "created_at", "action", "outcome", "target_name", "message")}),
        ("Who", {"fields": ("actor", "actor_user_id", "client_ip", "user_agent")}),
        ("What it concerns", {"fields": ("request_link", "snapshot_link", "from_revision", "to_revision")}),
        ("Detail", {"fields": ("detail_pretty",)}),
        ("Hash chain", {"fields": ("prev_hash", "hash")}),
    )
    readonly_fields = (
        "seq",
        "created_at",
        "action",
        "outcome",
        "target_name",
        "message",
        "actor",
        "actor_user_id",
        "client_ip",
        "user_agent",
        "request_link",
        "snapshot_link",
        "from_revision",
        "to_revision",
        "detail_pretty",
        "prev_hash",
        "hash",
    )

    # ------------------------------------------------------------ read-only
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    # ------------------------------------------------------------- columns
    @admin.display(description="time", ordering="created_at")
    def time(self, obj: AuditEvent) -> str:
        # The console's one date form (console/formats: "Y-m-d H:i:s T") written with strftime: Django's
        # date formatter cost half of this page's rendering time at 100 rows.
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S %Z")

    @admin.display(description="request", ordering="request_id")
    def request_link(self, obj: AuditEvent) -> str:
        return admin_link("rollbackrequest", obj.request_id)

    @admin.display(description="snapshot", ordering="snapshot_id")
    def snapshot_link(self, obj: AuditEvent) -> str:
        return admin_link("snapshot", obj.snapshot_id)

    @admin.display(description="message")
    def short_message(self, obj: AuditEvent) -> str:
        return obj.message if len(obj.message) <= 120 else obj.message[:119] + "…"

    @admin.display(description="detail")
    def detail_pretty(self, obj: AuditEvent) -> str:
        return format_html(
            '<pre class="ops-json">{}</pre>', json.dumps(obj.detail, indent=2, sort_keys=True, ensure_ascii=False)
        )

    # --------------------------------------------------------------- search
    def get_paginator(self, request: HttpRequest, queryset, per_page: int, orphans: int = 0, **kwargs):
        searched = bool(request.GET.get("q", "").strip())
        paginator = SearchCountPaginator if searched else self.paginator
        return paginator(queryset, per_page, orphans, **kwargs)

    def get_search_results(self, request: HttpRequest, queryset, search_term: str):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip().lstrip("#")
        if term.isascii() and term.isdigit() and len(term) < 19:
            results = results | queryset.filter(request_id=int(term))
        return results, may_have_duplicates

    # ------------------------------------------------- list page and export
    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        query = request.GET.copy()
        query.pop("p", None)
        query.pop("e", None)
        context = {
            "audit_last_verification": last_verification(),
            # "Never verified" and "overdue" come from the same CronRun record as check_cron and /metrics.
            "audit_verify_job": job_status("verify_audit_log"),
            "audit_success": AuditOutcome.SUCCESS,
            "audit_can_export": request.user.has_perm(EXPORT_PERMISSION),
            "audit_export_query": ("?" + query.urlencode()) if query else "",
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def get_urls(self):
        urls = [
            path(
                "export/<str:fmt>/",
                self.admin_site.admin_view(self.export_view),
                name="opsapp_auditevent_export",
            )
        ]
        return urls + super().get_urls()

    def export_view(self, request: HttpRequest, fmt: str) -> HttpResponse:
        """POST only (each export is audited; a GET writes nothing): stream the events the filters
        in the query string select, oldest first."""
        if not (self.has_view_permission(request) and request.user.has_perm(EXPORT_PERMISSION)):
            raise PermissionDenied
        if fmt not in FORMATS:
            raise Http404(f"unknown export format {fmt!r}")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Those filters are not valid for the audit log.")
        filters = {
            key: request.GET.getlist(key) if len(request.GET.getlist(key)) > 1 else value
            for key, value in request.GET.items()
        }
        queryset = start_export(changelist.queryset, fmt=fmt, actor=Actor.from_request(request), filters=filters)
        response = StreamingHttpResponse(
            (chunk.encode("utf-8") for chunk in iter_export(fmt, queryset)), content_type=CONTENT_TYPES[fmt]
        )
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        response["Content-Disposition"] = f'attachment; filename="audit-log-{stamp}.{fmt}"'
        response["Cache-Control"] = "no-store"
        return response
