"""Admin for snapshots: a read-only list, a "verify selected" action, a "take snapshot" POST URL.

Rows are never added, changed or deleted here; only the snapshot service
changes them (take, verify, prune), and it audits every change.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.timesince import timesince

from opsapp.models import OperationKind, Snapshot, SnapshotStatus, Target
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError

TAKE_PERMISSION = "opsapp.take_snapshot"
RESTORE_PERMISSION = "opsapp.restore_snapshot"
RESTORABLE = (SnapshotStatus.COMPLETE, SnapshotStatus.VERIFIED)


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = ("id", "target", "status", "human_size", "age", "heads_display", "short_checksum", "taken_by")
    list_filter = ("target", "status")
    list_select_related = ("target",)
    search_fields = ("sha256", "path", "taken_by")
    date_hierarchy = "started_at"
    ordering = ("-started_at", "-id")
    actions = ["verify_selected"]
    change_form_template = "admin/opsapp/snapshot/change_form.html"
    fields = (
        "target",
        "status",
        "format",
        "path",
        "size",
        "database_size",
        "sha256",
        "heads",
        "dump_tool_version",
        "server_version",
        "taken_by",
        "started_at",
        "finished_at",
        "verified_at",
        "pruned_at",
        "error",
    )
    readonly_fields = fields

    # Read-only rows: only the snapshot service changes them.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Snapshot | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Snapshot | None = None) -> bool:
        return False

    def response_action(self, request: HttpRequest, queryset):
        # The checkboxes send snapshot ids; anything else (a hand-made POST) would be a ValueError, a 500.
        selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
        if not all(value.isascii() and value.isdigit() for value in selected):
            return HttpResponseBadRequest(
                "Bad request: the selected snapshots must be snapshot ids.", content_type="text/plain; charset=utf-8"
            )
        return super().response_action(request, queryset)

    def has_take_snapshot_permission(self, request: HttpRequest) -> bool:
        # Django allows an action when ANY of its permissions holds, so both are checked here.
        return self.has_view_permission(request) and request.user.has_perm(TAKE_PERMISSION)

    @admin.display(description="size", ordering="size")
    def human_size(self, obj: Snapshot) -> str:
        return filesizeformat(obj.size) if obj.size is not None else "-"

    @admin.display(description="age", ordering="-started_at")
    def age(self, obj: Snapshot) -> str:
        return timesince(obj.started_at, timezone.now()) if obj.started_at else "-"

    @admin.display(description="heads")
    def heads_display(self, obj: Snapshot) -> str:
        return ", ".join(h[:12] for h in obj.heads) or "(empty)"

    @admin.display(description="SHA-256")
    def short_checksum(self, obj: Snapshot) -> str:
        return obj.sha256[:12] or "-"

    @admin.action(description="Verify selected snapshots", permissions=["take_snapshot"])
    def verify_selected(self, request: HttpRequest, queryset) -> None:
        from opsapp.services.snapshots import lifecycle as snapshots  # lazy: pulls in Alembic and SQLAlchemy

        actor = Actor.from_request(request)
        for snap in queryset.select_related("target"):
            try:
                snap = snapshots.verify_snapshot(snap, actor=actor)
            except OpsError as exc:
                self.message_user(request, str(exc), messages.WARNING)
                continue
            if snap.status == "verified":
                self.message_user(request, f"Snapshot #{snap.pk} of {snap.target.name} verified.", messages.SUCCESS)
            else:
                self.message_user(request, f"Snapshot #{snap.pk} failed verification: {snap.error}", messages.ERROR)

    def get_urls(self):
        custom = [
            path("take/", self.admin_site.admin_view(self.take_view), name="opsapp_snapshot_take"),
            path(
                "<path:object_id>/restore/",
                self.admin_site.admin_view(self.restore_view),
                name="opsapp_snapshot_restore",
            ),
        ]
        return custom + super().get_urls()

    def take_view(self, request: HttpRequest):
        """POST only (CSRF-checked by admin_view): queue a snapshot of the posted target; go to its operation."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_take_snapshot_permission(request):
            raise PermissionDenied
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            back = reverse("admin:opsapp_snapshot_changelist")
        try:
            target = Target.objects.get(pk=int(request.POST.get("target", "")))
        except (ValueError, Target.DoesNotExist):
            self.message_user(request, "No such target.", messages.ERROR)
            return HttpResponseRedirect(back)
        from opsapp.services.operations.queue import enqueue  # lazy: admin autodiscover stays light

        try:
            op = enqueue(OperationKind.SNAPSHOT, target.name, actor=Actor.from_request(request))
        except OpsError as exc:
            self.message_user(request, f"Snapshot of {target.name} not queued: {exc}", messages.ERROR)
            return HttpResponseRedirect(back)
        # A dump can take longer than any HTTP timeout: a worker takes it; its page shows the progress.
        self.message_user(request, f"Snapshot of {target.name} queued as operation #{op.pk}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:opsapp_operation_change", args=[op.pk]))

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        snap = Snapshot.objects.filter(pk=object_id).first() if object_id.isascii() and object_id.isdigit() else None
        extra = dict(extra_context or {})
        extra["may_restore"] = (
            snap is not None and snap.status in RESTORABLE and request.user.has_perm(RESTORE_PERMISSION)
        )
        return super().change_view(request, object_id, form_url, extra)

    def restore_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the confirmation page (snapshot, destinations, what happens). POST: queue the restore; go to it."""
        from opsapp.destinations import all_destinations

        if not request.user.has_perm(RESTORE_PERMISSION):
            raise PermissionDenied
        snap = get_object_or_404(
            Snapshot.objects.select_related("target"),
            pk=object_id if object_id.isascii() and object_id.isdigit() else 0,
        )
        back = reverse("admin:opsapp_snapshot_change", args=[snap.pk])
        destinations = all_destinations()
        if request.method == "POST":
            from opsapp.services.operations.queue import enqueue_restore  # lazy: admin autodiscover stays light

            name = request.POST.get("destination", "")
            if name not in {d.name for d in destinations}:
                self.message_user(request, "Choose one of the configured restore destinations.", messages.ERROR)
                return HttpResponseRedirect(reverse("admin:opsapp_snapshot_restore", args=[snap.pk]))
            try:
                op = enqueue_restore(snap.pk, name, actor=Actor.from_request(request))
            except OpsError as exc:
                self.message_user(request, f"Restore not queued: {exc}", messages.ERROR)
                return HttpResponseRedirect(back)
            self.message_user(
                request,
                f"Restore of snapshot #{snap.pk} into destination {name!r} queued as operation #{op.pk}.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:opsapp_operation_change", args=[op.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Restore snapshot #{snap.pk} of {snap.target.name}?",
            "opts": self.opts,
            "snapshot": snap,
            "restorable": snap.status in RESTORABLE,
            "destinations": destinations,
            "back": back,
        }
        return TemplateResponse(request, "admin/opsapp/snapshot/restore_confirm.html", context)
