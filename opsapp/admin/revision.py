"""Admin for revisions: the synced catalogs, filterable, with a read-only detail page.

Every page here reads synced rows only (no migration file is imported). A
revision row belongs to a script directory's catalog, shared by the targets
reading it; applied/current are per target, derived from the target's heads
(`catalog.store`). Pages take the target from the changelist filter
(`target__id__exact`) or `?target=`; without one, a catalog read by a
single target shows that target's position. The detail page adds
parents/children as links and, from the planner, what "downgrade to here"
would revert on the target's current heads.
"""

from __future__ import annotations

from pathlib import Path

from django.contrib import admin
from django.db import connection
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, QueryDict
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html_join
from django.utils.http import urlencode

from opsapp.models import Revision, Target
from opsapp.models.target import TargetState
from opsapp.services.catalog import store
from opsapp.services.errors import OpsError, RevisionResolutionError

PREVIEW_STEPS = 100
OTHER_TARGETS = 10  # a revision page names at most this many other targets reading its directory


def chosen_target(request: HttpRequest) -> Target | None:
    """The target the page is about: the changelist filter, `?target=`, or the one in preserved filters."""
    wanted = request.GET.get("target__id__exact") or request.GET.get("target") or ""
    if not wanted:
        preserved = QueryDict(request.GET.get("_changelist_filters", ""))
        wanted = preserved.get("target__id__exact", "")
    if not (wanted.isascii() and wanted.isdigit()) or len(wanted) > 18:
        return None
    return Target.objects.select_related("catalog").filter(pk=int(wanted)).first()


def readers_of(catalog_ids: set[int]) -> dict[int, list[Target]]:
    """catalog id -> the targets reading it (one query)."""
    found: dict[int, list[Target]] = {}
    for target in Target.objects.select_related("catalog").filter(catalog_id__in=catalog_ids).order_by("name"):
        found.setdefault(target.catalog_id, []).append(target)
    return found


def sole_targets(catalog_ids: set[int]) -> dict[int, Target]:
    """catalog id -> its target, for those of `catalog_ids` that exactly one target reads."""
    return {catalog_id: targets[0] for catalog_id, targets in readers_of(catalog_ids).items() if len(targets) == 1}


class TargetFilter(admin.SimpleListFilter):
    """A target's revisions are its catalog's; the parameter keeps the old field filter's name."""

    title = "target"
    parameter_name = "target__id__exact"

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in Target.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        target = chosen_target(request)
        if target is None or target.catalog_id is None:
            return queryset.none()
        return queryset.filter(catalog_id=target.catalog_id)


class AppliedFilter(admin.SimpleListFilter):
    """Applied or pending on the chosen target (or, unfiltered, on the only target of each catalog)."""

    title = "applied / pending"
    parameter_name = "applied"

    def lookups(self, request, model_admin):
        return (("applied", "applied"), ("pending", "pending"))

    def queryset(self, request, queryset):
        if self.value() not in ("applied", "pending"):
            return queryset
        target = chosen_target(request)
        if target is not None:
            by_catalog = {target.catalog_id: target} if target.catalog_id is not None else {}
        else:
            by_catalog = sole_targets(set(queryset.order_by().values_list("catalog_id", flat=True).distinct()))
        wanted = Q(pk__in=[])
        for catalog_id, each in by_catalog.items():
            applied, _ = store.position_of(each)
            if self.value() == "applied":
                wanted |= Q(catalog_id=catalog_id, revision__in=applied)
            else:
                wanted |= Q(catalog_id=catalog_id) & ~Q(revision__in=applied)
        return queryset.filter(wanted)


class BranchLabelFilter(admin.SimpleListFilter):
    title = "branch label"
    parameter_name = "branch_label"

    def lookups(self, request, model_admin):
        target = chosen_target(request)
        rows = Revision.objects.exclude(branch_labels_text="")
        if target is not None:
            rows = rows.filter(catalog_id=target.catalog_id)
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
    """Rows of the same catalog whose down_revisions contain this revision."""
    rows = Revision.objects.filter(catalog_id=revision.catalog_id)
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
        "target_display",
        "branch_labels_display",
        "message",
        "flags",
    )
    list_display_links = ("short_id",)
    list_filter = (
        TargetFilter,
        ("is_head", titled("head")),
        ("is_base", titled("base")),
        ("is_branch_point", titled("branch point")),
        ("is_merge_point", titled("merge point")),
        AppliedFilter,
        BranchLabelFilter,
    )
    search_fields = ("revision__startswith", "message", "branch_labels_text")
    search_help_text = "Revision id prefix, words of the message, or a branch label."
    list_select_related = ("catalog",)
    show_full_result_count = False
    list_per_page = 100
    # Matches index revision_catalog_pos_id, so a page at 50k revisions reads 100 index
    # entries instead of sorting every row of the catalog.
    ordering = ("catalog_id", "-position", "-id")
    fieldsets = (
        (None, {"fields": ("revision", "target_display", "message", "create_date", "path")}),
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
        ("Database", {"fields": ("applied_display", "current_display")}),
        ("Docstring", {"fields": ("docstring",)}),
    )
    readonly_fields = (
        "revision",
        "target_display",
        "message",
        "create_date",
        "path",
        "branch_labels_display",
        "depends_on_display",
        "is_head",
        "is_base",
        "is_branch_point",
        "is_merge_point",
        "applied_display",
        "current_display",
        "docstring",
    )

    def get_changelist_instance(self, request: HttpRequest):
        """The page's rows, each with the position (applied, current) of the target it is shown for."""
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)  # evaluates (and caches) the page's queryset once
        target = chosen_target(request)
        readers: dict[int, list[Target]] = {}
        if target is not None:
            for_catalog = {target.catalog_id: target}
        else:
            readers = readers_of({row.catalog_id for row in rows})
            for_catalog = {catalog_id: each[0] for catalog_id, each in readers.items() if len(each) == 1}
        positions = {catalog_id: store.position_of(each) for catalog_id, each in for_catalog.items()}
        for row in rows:
            row.ops_target = for_catalog.get(row.catalog_id)
            row.ops_readers = len(readers.get(row.catalog_id, ()))
            applied, current = positions.get(row.catalog_id, (None, set()))
            row.applied = None if applied is None else row.revision in applied
            row.is_current = row.revision in current
        return changelist

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None):
        """The revision, with `ops_target` (the target it is shown for) and that target's position."""
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            target = chosen_target(request)
            if target is None or target.catalog_id != obj.catalog_id:
                target = (
                    Target.objects.select_related("catalog").filter(catalog_id=obj.catalog_id).order_by("name").first()
                )
            obj.ops_target = target
            if target is not None:
                store.annotate([obj], target)
            else:
                obj.applied, obj.is_current = None, False
        return obj

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

    @admin.display(description="target")
    def target_display(self, obj: Revision) -> str:
        """The target whose position the row shows; else the script directory it belongs to."""
        target = getattr(obj, "ops_target", None)
        if target is not None:
            return target.name
        # Several targets read this directory and none is chosen: name the directory, shortly.
        tail = "/".join(Path(obj.catalog.directory).parts[-2:]) or "script directory"
        return f"{tail} ({getattr(obj, 'ops_readers', 0)} targets)"

    @admin.display(description="applied", boolean=True)
    def applied_display(self, obj: Revision) -> bool | None:
        target = getattr(obj, "ops_target", None)
        if target is None or target.state in UNKNOWN_STATES:
            return None
        return bool(obj.applied)

    @admin.display(description="is current", boolean=True)
    def current_display(self, obj: Revision) -> bool:
        return bool(getattr(obj, "is_current", False))

    # Short column titles keep the changelist narrow enough to read next to the filters.
    @admin.display(description="flags")
    def flags(self, obj: Revision) -> str:
        """Only what is true ("current, head"), not a wall of ✘ icons; pending only when it is known."""
        names = [
            name
            for flag, name in (
                (getattr(obj, "is_current", False), "current"),
                (obj.is_head, "head"),
                (obj.is_base, "base"),
                (obj.is_branch_point, "branch point"),
                (obj.is_merge_point, "merge point"),
            )
            if flag
        ]
        target = getattr(obj, "ops_target", None)
        if target is not None and target.state in UNKNOWN_STATES:
            names.append("applied: unknown")
        elif target is not None and not obj.applied:
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
            extra.update(self._detail_context(obj, obj.ops_target))
        return super().change_view(request, object_id, form_url, extra)

    def _detail_context(self, obj: Revision, target: Target | None) -> dict:
        in_catalog = Revision.objects.filter(catalog_id=obj.catalog_id)
        related_ids = set(obj.down_revisions or []) | set(obj.depends_on or [])
        by_id = {r.revision: r for r in in_catalog.filter(revision__in=related_ids).only("id", "revision", "message")}
        for label in related_ids - set(by_id):
            # depends_on may name a branch label: Alembic resolves it to the revision declaring the label.
            row = in_catalog.filter(label_q(label)).only("id", "revision", "message", "branch_labels").first()
            if row is not None and label in (row.branch_labels or []):
                by_id[label] = row
        plan, plan_error = None, ""
        from opsapp.services.catalog.preview import preview_downgrade

        if target is None:
            plan_error = "No target reads this script directory any more: there is no database position to plan from."
        else:
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
                for r in in_catalog.filter(revision__in=shown).only("id", "revision", "message", "branch_labels")
            }
            steps = [(rev, step_rows.get(rev)) for rev in shown]
        others = (
            Target.objects.filter(catalog_id=obj.catalog_id).exclude(pk=target.pk).order_by("name")
            if target is not None
            else Target.objects.none()
        )
        shown_others = list(others[:OTHER_TARGETS])
        return {
            "revision_obj": obj,
            "target": target,
            "target_query": f"?target={target.pk}" if target is not None else "",
            "other_targets": shown_others,
            "other_targets_more": others.count() - len(shown_others) if len(shown_others) == OTHER_TARGETS else 0,
            "parents": [(rev, by_id.get(rev)) for rev in obj.down_revisions or []],
            "children": children_of(obj),
            "dependencies": [(rev, by_id.get(rev)) for rev in obj.depends_on or []],
            "plan": plan,
            "plan_steps": steps,
            "plan_steps_more": len(plan.steps) - len(steps) if plan is not None else 0,
            "plan_error": plan_error,
            "rollback_url": rollback_request_url(target, obj.revision) if target is not None else None,
            "graph_url": reverse("admin:opsapp_target_graph", args=[target.pk]) if target is not None else "",
            "target_url": reverse("admin:opsapp_target_change", args=[target.pk]) if target is not None else "",
        }
