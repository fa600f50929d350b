"""Admin for revisions: the synced catalog, filterable, with a read-only detail page.

Every page here reads synced rows only (no migration file is imported). The
detail page adds parents/children as links and, from the planner, what
"downgrade to here" would revert on the target's current heads.
"""

from __future__ import annotations

from django.contrib import admin
from django.db import connection
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html_join
from django.utils.http import urlencode

from opsapp.models import Revision, Target
from opsapp.models.target import TargetState
from opsapp.services.errors import OpsError, RevisionResolutionError

PREVIEW_STEPS = 100


class AppliedFilter(admin.SimpleListFilter):
    title = "applied / pending"
    parameter_name = "applied"

    def lookups(self, request, model_admin):
        return (("applied", "applied"), ("pending", "pending"))

    def queryset(self, request, queryset):
        if self.value() == "applied":
            return queryset.filter(applied=True)
        if self.value() == "pending":
            return queryset.filter(applied=False)
        return queryset


class BranchLabelFilter(admin.SimpleListFilter):
    title = "branch label"
    parameter_name = "branch_label"

    def lookups(self, request, model_admin):
        target_id = request.GET.get("target__id__exact")
        rows = Revision.objects.exclude(branch_labels_text="")
        if target_id and target_id.isdigit():
            rows = rows.filter(target_id=int(target_id))
        labels: set[str] = set()
        # order_by(): the model's ordering would enter the DISTINCT and return every labelled row.
        for text in rows.order_by().values_list("branch_labels_text", flat=True).distinct():
            labels.update(text.split())
        return [(label, label) for label in sorted(labels)]

    def queryset(self, request, queryset):
        label = self.value()
        if not label:
            return queryset
        return queryset.filter(label_q(label))


def label_q(label: str) -> Q:
    """Rows carrying branch label `label` (branch_labels_text is space-joined: match whole words only)."""
    return (
        Q(branch_labels_text=label)
        | Q(branch_labels_text__startswith=label + " ")
        | Q(branch_labels_text__endswith=" " + label)
        | Q(branch_labels_text__contains=" " + label + " ")
    )


def titled(title: str) -> type[admin.BooleanFieldListFilter]:
    """A yes/no filter with a readable title ("head", not "is head")."""

    class TitledBooleanFilter(admin.BooleanFieldListFilter):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.title = title

    return TitledBooleanFilter


# States in which alembic_version does not say which revisions are applied.
UNKNOWN_STATES = (TargetState.UNKNOWN_REVISION, TargetState.UNREACHABLE, TargetState.SCRIPT_ERROR)


def revision_change_url(pk: int) -> str:
    return reverse("admin:opsapp_revision_change", args=[pk])


def children_of(revision: Revision) -> list[Revision]:
    """Rows of the same target whose down_revisions contain this revision."""
    rows = Revision.objects.filter(target_id=revision.target_id)
    if connection.vendor == "postgresql":
        return list(rows.filter(down_revisions__contains=[revision.revision]).order_by("position", "revision"))
    # SQLite has no JSON containment lookup: filter in Python.
    return [r for r in rows.order_by("position", "revision") if revision.revision in (r.down_revisions or [])]


def rollback_request_url(target: Target, revision: str) -> str | None:
    """Link to the rollback request form, prefilled; None while that admin does not exist."""
    try:
        base = reverse("admin:opsapp_rollbackrequest_add")
    except NoReverseMatch:
        return None
    return base + "?" + urlencode({"target": target.name, "to": revision})


@admin.register(Revision)
class RevisionAdmin(admin.ModelAdmin):
    list_display = (
        "short_id",
        "target",
        "branch_labels_display",
        "message",
        "flags",
    )
    list_display_links = ("short_id",)
    list_filter = (
        "target",
        ("is_head", titled("head")),
        ("is_base", titled("base")),
        ("is_branch_point", titled("branch point")),
        ("is_merge_point", titled("merge point")),
        AppliedFilter,
        BranchLabelFilter,
    )
    search_fields = ("revision__startswith", "message", "branch_labels_text")
    search_help_text = "Revision id prefix, words of the message, or a branch label."
    list_select_related = ("target",)
    show_full_result_count = False
    list_per_page = 100
    # Matches index revision_target_pos_id, so a page at 50k revisions reads 100 index
    # entries instead of sorting every row of the target (the model's ordering goes
    # through target.name, which no index on this table can serve).
    ordering = ("target_id", "-position", "-id")
    fieldsets = (
        (None, {"fields": ("revision", "target", "message", "create_date", "path")}),
        (
            "Graph",
            {
                "fields": (
                    "branch_labels_display",
                    "depends_on_display",
                    "is_head",
                    "is_base",
                    "is_branch_point",
                    "is_merge_point",
                )
            },
        ),
        ("Database", {"fields": ("applied", "is_current")}),
        ("Docstring", {"fields": ("docstring",)}),
    )
    readonly_fields = (
        "revision",
        "target",
        "message",
        "create_date",
        "path",
        "branch_labels_display",
        "depends_on_display",
        "is_head",
        "is_base",
        "is_branch_point",
        "is_merge_point",
        "applied",
        "is_current",
        "docstring",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Revision | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Revision | None = None) -> bool:
        return False

    @admin.display(description="revision", ordering="revision")
    def short_id(self, obj: Revision) -> str:
        return obj.short

    @admin.display(description="branch labels", ordering="branch_labels_text")
    def branch_labels_display(self, obj: Revision) -> str:
        return ", ".join(obj.branch_labels or []) or "—"

    # Short column titles keep the changelist narrow enough to read next to the filters.
    @admin.display(description="flags")
    def flags(self, obj: Revision) -> str:
        """Only what is true ("current, head"), not a wall of ✘ icons; pending only when it is known."""
        names = [
            name
            for flag, name in (
                (obj.is_current, "current"),
                (obj.is_head, "head"),
                (obj.is_base, "base"),
                (obj.is_branch_point, "branch point"),
                (obj.is_merge_point, "merge point"),
            )
            if flag
        ]
        if obj.target.state in UNKNOWN_STATES:
            names.append("applied: unknown")
        elif not obj.applied:
            names.append("pending")
        return (
            format_html_join(
                " ",
                '<span class="ops-flag ops-flag-{}">{}</span>',
                ((n.split(":")[0].replace(" ", "-"), n) for n in names),
            )
            or "—"
        )

    @admin.display(description="depends on")
    def depends_on_display(self, obj: Revision) -> str:
        return ", ".join(obj.depends_on or []) or "—"

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        obj = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if obj is not None and self.has_view_permission(request, obj):
            extra.update(self._detail_context(obj))
        return super().change_view(request, object_id, form_url, extra)

    def _detail_context(self, obj: Revision) -> dict:
        target = obj.target
        related_ids = set(obj.down_revisions or []) | set(obj.depends_on or [])
        by_id = {
            r.revision: r
            for r in Revision.objects.filter(target=target, revision__in=related_ids).only("id", "revision", "message")
        }
        for label in related_ids - set(by_id):
            # depends_on may name a branch label: Alembic resolves it to the revision declaring the label.
            row = (
                Revision.objects.filter(target=target)
                .filter(label_q(label))
                .only("id", "revision", "message", "branch_labels")
                .first()
            )
            if row is not None and label in (row.branch_labels or []):
                by_id[label] = row
        plan, plan_error = None, ""
        from opsapp.services.catalog.preview import preview_downgrade

        try:
            plan = preview_downgrade(target.name, obj.revision, list(target.current_heads or []))
        except RevisionResolutionError as exc:
            plan_error = str(exc)
        except OpsError as exc:
            plan_error = f"Cannot plan a downgrade: {exc}"
        steps = []
        if plan is not None:
            # Listed up to PREVIEW_STEPS: a downgrade near the base of a 10k history would otherwise
            # render 10k links (seconds); the request page lists every step.
            shown = plan.steps[:PREVIEW_STEPS]
            step_rows = {
                r.revision: r
                for r in Revision.objects.filter(target=target, revision__in=shown).only(
                    "id", "revision", "message", "branch_labels"
                )
            }
            steps = [(rev, step_rows.get(rev)) for rev in shown]
        return {
            "revision_obj": obj,
            "parents": [(rev, by_id.get(rev)) for rev in obj.down_revisions or []],
            "children": children_of(obj),
            "dependencies": [(rev, by_id.get(rev)) for rev in obj.depends_on or []],
            "plan": plan,
            "plan_steps": steps,
            "plan_steps_more": len(plan.steps) - len(steps) if plan is not None else 0,
            "plan_error": plan_error,
            "rollback_url": rollback_request_url(target, obj.revision),
            "graph_url": reverse("admin:opsapp_target_graph", args=[target.pk]),
            "target_url": reverse("admin:opsapp_target_change", args=[target.pk]),
        }
