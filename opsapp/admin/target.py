"""Admin for targets: where each database stands, drift explained, graph page, "Sync now".

Read-only: targets come from the environment (OPS_TARGETS) and are mirrored by
the catalog service. A GET writes nothing: pages show the synced rows plus
the live heads (`catalog.peek_heads`, which stores nothing) and say when the
two differ. Only the explicit "Sync now" / "Sync all targets" POSTs (or cron's
sync_revisions) write the catalog and audit a change made outside the console.
Pages never import migration files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from opsapp.models import Revision, Target, TargetState
from opsapp.services.actors import Actor
from opsapp.services.catalog import store
from opsapp.services.errors import OpsError
from opsapp.targets import configured_names, mask_url

if TYPE_CHECKING:
    from opsapp.services.catalog.sync import DbRead


GRAPH_JUMP_HEADS = 12  # the graph page lists at most this many heads as jump links


def resolve_revision(wanted: str, rows: list[Revision]) -> str:
    """The full id of the revision `wanted` names (an id, a unique prefix of one, or a branch label).

    Otherwise a message starting with a space (so it can never be mistaken for an id).
    """
    ids = [r.revision for r in rows]
    if wanted in ids:
        return wanted
    labelled = [r.revision for r in rows if wanted in (r.branch_labels or [])]
    if len(labelled) == 1:
        return labelled[0]
    matches = [rev for rev in ids if rev.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        return f" {wanted!r} matches {len(matches)} revisions ({short_ids(matches[:5])}{', …' if len(matches) > 5 else ''}): type more of the id."
    return f" No revision {wanted!r} here: give a revision id, a prefix of one, or a branch label."


def short_ids(ids: list[str] | None) -> str:
    return ", ".join(i[:12] for i in ids or []) or "—"


def live_heads(target: Target) -> DbRead | None:
    """What the target's alembic_version holds now (nothing stored); None for an unconfigured target."""
    from opsapp.services.catalog import sync as catalog

    if target.name not in configured_names():
        return None
    try:
        return catalog.peek_heads(target.name)
    except OpsError:
        return None


def can_sync(user) -> bool:
    """Operators (and superusers) may re-sync a target on demand; viewers only look."""
    return user.has_perm("opsapp.take_snapshot") or user.has_perm("opsapp.add_rollbackrequest")


@admin.register(Target)
class TargetAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "masked_url",
        "state_display",
        "current_heads_display",
        "script_heads_display",
        "last_synced_at",
        "revision_count",
        "tags_display",
    )
    list_display_links = ("name",)
    search_fields = ("name",)
    fieldsets = (
        # state_detail is shown above the fieldsets (the drift explanation), not repeated here.
        (None, {"fields": ("name", "masked_url", "dialect", "alembic_ini", "tags_display", "state_display")}),
        ("Heads", {"fields": ("current_heads_display", "script_heads_display", "pending_display", "revision_count")}),
        ("Sync", {"fields": ("script_fingerprint", "last_synced_at", "last_checked_at")}),
    )
    readonly_fields = (
        "name",
        "masked_url",
        "dialect",
        "alembic_ini",
        "tags_display",
        "state_display",
        "current_heads_display",
        "script_heads_display",
        "pending_display",
        "revision_count",
        "script_fingerprint",
        "last_synced_at",
        "last_checked_at",
    )

    # ------------------------------------------------------------ permissions
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Target | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Target | None = None) -> bool:
        return False

    # ---------------------------------------------------------------- columns
    @admin.display(description="URL", ordering="url_masked")
    def masked_url(self, obj: Target) -> str:
        # Stored masked already; mask again so nothing unmasked can ever leak through here.
        return mask_url(obj.url_masked)

    @admin.display(description="state", ordering="state")
    def state_display(self, obj: Target) -> str:
        label = obj.get_state_display()
        if obj.state == TargetState.BEHIND and obj.pending_count:
            return f"{label} ({obj.pending_count} pending)"
        return label

    @admin.display(description="pending revisions", ordering="pending_count")
    def pending_display(self, obj: Target) -> str | int:
        from opsapp.admin.revision import UNKNOWN_STATES

        # A database at a revision the scripts lack (or unreachable) has no known place in the history.
        return "unknown" if obj.state in UNKNOWN_STATES else obj.pending_count

    @admin.display(description="tags")
    def tags_display(self, obj: Target) -> str:
        # From OPS_TARGETS_FILE; the admin index's fleet matrix filters on them.
        return ", ".join(f"{key}={value}" for key, value in sorted((obj.tags or {}).items())) or "—"

    @admin.display(description="current heads (database)")
    def current_heads_display(self, obj: Target) -> str:
        return short_ids(obj.current_heads)

    @admin.display(description="heads (scripts)")
    def script_heads_display(self, obj: Target) -> str:
        return short_ids(obj.script_heads)

    # ----------------------------------------------------------------- views
    def get_urls(self):
        custom = [
            path(
                "<path:object_id>/graph/",
                self.admin_site.admin_view(self.graph_view),
                name="opsapp_target_graph",
            ),
            path("sync/", self.admin_site.admin_view(self.sync_all_view), name="opsapp_target_sync_all"),
            path(
                "<path:object_id>/sync/",
                self.admin_site.admin_view(self.sync_view),
                name="opsapp_target_sync",
            ),
        ]
        return custom + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        extra = dict(extra_context or {})
        if self.has_view_permission(request):
            extra.update(self._list_context(request))
        return super().changelist_view(request, extra)

    def _list_context(self, request: HttpRequest) -> dict:
        """Targets whose live heads differ from the catalog, cannot be read now, or were never synced."""
        names = configured_names()
        rows = {t.name: t for t in Target.objects.filter(name__in=names).order_by("name")}
        moved, unreadable = [], []
        for target in rows.values():
            live = live_heads(target) if target.last_synced_at is not None else None
            if live is None:
                continue
            if live.error is not None:
                if target.state != TargetState.UNREACHABLE:
                    unreadable.append({"target": target, "error": mask_url(live.error)})
            elif sorted(live.heads) != sorted(target.current_heads or []):
                moved.append(
                    {"target": target, "live": short_ids(live.heads), "known": short_ids(target.current_heads)}
                )
        return {
            "heads_moved": moved,
            "heads_unreadable": unreadable,
            "not_synced": [n for n in names if n not in rows or rows[n].last_synced_at is None],
            "sync_all_url": reverse("admin:opsapp_target_sync_all") if can_sync(request.user) else "",
        }

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        target = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if target is not None and self.has_view_permission(request, target):
            extra.update(self._detail_context(request, target))
        return super().change_view(request, object_id, form_url, extra)

    def _detail_context(self, request: HttpRequest, target: Target) -> dict:
        from opsapp.services.catalog import drift
        from opsapp.services.catalog import sync as catalog

        # state_detail already carries the drift explanation (unknown revision, multiple heads, script
        # errors). Heads meant to stay separate are "at head" without it, so say once how to join them.
        heads_note = ""
        if len(target.script_heads or []) > 1 and target.state != TargetState.MULTIPLE_HEADS:
            heads_note = (
                f"The scripts have {len(target.script_heads)} heads ({', '.join(target.script_heads)}). "
                "That is fine for branches meant to stay separate (upgrade with `alembic upgrade heads`); "
                f"to join them: {drift.merge_command(list(target.script_heads))}"
            )
        revisions_url = reverse("admin:opsapp_revision_changelist") + "?" + urlencode({"target__id__exact": target.pk})
        live = live_heads(target)
        configured = target.name in configured_names()
        return {
            "scripts_note": mask_url(catalog.stale_catalog_note(target)) if configured else "",
            "live_heads": short_ids(live.heads) if live and live.error is None else "",
            "live_error": mask_url(live.error) if live and live.error else "",
            "heads_moved": bool(
                live
                and live.error is None
                and target.last_synced_at is not None
                and sorted(live.heads) != sorted(target.current_heads or [])
            ),
            "target": target,
            "configured": configured,
            "heads_note": heads_note,
            "drift_state": target.state
            in (
                TargetState.UNKNOWN_REVISION,
                TargetState.OVERLAPPING_VERSIONS,
                TargetState.MULTIPLE_HEADS,
                TargetState.SCRIPT_ERROR,
                TargetState.UNREACHABLE,
            ),
            "sync_errors": [mask_url(str(e)) for e in (target.sync_errors or [])],
            "state_detail": mask_url(target.state_detail),
            "revisions_url": revisions_url,
            "pending_url": revisions_url + "&" + urlencode({"applied": "pending"}),
            "graph_url": reverse("admin:opsapp_target_graph", args=[target.pk]),
            "sync_url": reverse("admin:opsapp_target_sync", args=[target.pk]) if can_sync(request.user) else "",
            "current_revisions": list(
                Revision.objects.filter(catalog_id=target.catalog_id, revision__in=target.current_heads or []).order_by(
                    "-position"
                )
            )
            if target.catalog_id is not None
            else [],
        }

    def _get_target_or_404(self, request: HttpRequest, object_id: str) -> Target:
        target = self.get_object(request, object_id)
        if target is None:
            raise Http404("No such target.")
        if not self.has_view_permission(request, target):
            raise PermissionDenied
        return target

    def sync_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST only (CSRF-protected by admin_view): re-read the script directory and alembic_version."""
        target = self._get_target_or_404(request, object_id)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not can_sync(request.user):
            # Auditors and approvers only look: a sync writes the catalog and may audit head changes.
            raise PermissionDenied("Syncing a target is for operators.")
        from opsapp.services.catalog import sync as catalog

        try:
            synced = catalog.sync_target(
                target.name, actor=Actor.from_request(request), force=bool(request.POST.get("force"))
            )
        except OpsError as exc:
            messages.error(request, f"Sync of {target.name} failed: {mask_url(str(exc))}")
        else:
            level = messages.SUCCESS if synced.state in (TargetState.AT_HEAD, TargetState.BEHIND) else messages.WARNING
            messages.add_message(
                request,
                level,
                format_html(
                    "Synced {}: {} revisions, state {}.", synced.name, synced.revision_count, synced.get_state_display()
                ),
            )
        return HttpResponseRedirect(reverse("admin:opsapp_target_change", args=[target.pk]))

    def sync_all_view(self, request: HttpRequest) -> HttpResponse:
        """POST only: sync every configured target (those never synced get their row and catalog)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not (self.has_view_permission(request) and can_sync(request.user)):
            raise PermissionDenied("Syncing targets is for operators.")
        from opsapp.services.catalog import sync as catalog

        actor = Actor.from_request(request)
        for name in configured_names():
            try:
                synced = catalog.sync_target(name, actor=actor)
            except OpsError as exc:
                messages.error(request, f"Sync of {name} failed: {mask_url(str(exc))}")
            else:
                ok = synced.state in (TargetState.AT_HEAD, TargetState.BEHIND)
                messages.add_message(
                    request,
                    messages.SUCCESS if ok else messages.WARNING,
                    f"Synced {synced.name}: {synced.revision_count} revisions, state {synced.get_state_display()}.",
                )
        return HttpResponseRedirect(reverse("admin:opsapp_target_changelist"))

    def graph_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The revision DAG of one target as inline SVG, from synced rows only."""
        from opsapp.services.catalog import graph

        target = self._get_target_or_404(request, object_id)
        rows = list(
            Revision.objects.filter(catalog_id=target.catalog_id)
            .order_by("position", "revision")
            .only(
                "id",
                "revision",
                "down_revisions",
                "depends_on",
                "branch_labels",
                "message",
                "is_head",
                "is_base",
                "is_branch_point",
                "is_merge_point",
            )
        )
        store.annotate(rows, target)  # this target's position on the shared catalog
        pks = {r.revision: r.pk for r in rows}
        # reverse() once, then substitute the pk: 10,000 reverse() calls would dominate the page.
        placeholder = "987654321"
        change_url = reverse("admin:opsapp_revision_change", args=[placeholder]) + f"?target={target.pk}"

        def href(rev: str) -> str:
            return change_url.replace(placeholder, str(pks[rev]))

        from opsapp.admin.revision import UNKNOWN_STATES

        page_url = reverse("admin:opsapp_target_graph", args=[target.pk])
        collapse = request.GET.get("collapse") == "1"
        wanted = request.GET.get("rev", "").strip()
        if wanted:  # the "jump to a revision" form: resolve the id server-side, then land on its anchor
            found = resolve_revision(wanted, rows)
            if not found.startswith(" "):
                query = urlencode({"collapse": 1, "show": found}) if collapse else ""
                return HttpResponseRedirect(f"{page_url}?{query}#{graph.node_id(found)}")
            messages.error(request, found.strip())
        nodes = graph.nodes_from_revisions(rows, applied_known=target.state not in UNKNOWN_STATES)
        full_total = len(nodes)
        if collapse:
            nodes = graph.collapse_runs(nodes, keep=[request.GET.get("show", "")])

        def run_href(node: graph.GraphNode) -> str:
            return f"{page_url}#{graph.node_id(node.revision)}"  # the full graph, scrolled to the run

        svg = (
            graph.render_svg(nodes, href=href, run_href=run_href, title=f"Revision graph of {target.name}")
            if nodes
            else ""
        )
        current = [r.revision for r in rows if r.is_current]
        heads = [r.revision for r in rows if r.is_head]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Revision graph: {target.name}",
            "subtitle": None,
            "target": target,
            "original": target,
            "svg": svg,
            "legend": graph.render_legend(),
            "revision_total": len(rows),
            "row_total": len(nodes),
            "collapsed_total": full_total - len(nodes),
            "collapse": collapse,
            "page_url": page_url,
            "wanted": wanted,
            "jump_current": [(rev[:12], graph.node_id(rev)) for rev in current],
            "jump_heads": [(rev[:12], graph.node_id(rev)) for rev in heads[:GRAPH_JUMP_HEADS]],
            "more_heads": max(len(heads) - GRAPH_JUMP_HEADS, 0),
            "merge_total": sum(1 for r in rows if r.is_merge_point),
            "current_heads": short_ids(target.current_heads),
            "target_url": reverse("admin:opsapp_target_change", args=[target.pk]),
            "revisions_url": reverse("admin:opsapp_revision_changelist")
            + "?"
            + urlencode({"target__id__exact": target.pk}),
        }
        return TemplateResponse(request, "admin/opsapp/target/graph.html", context)
