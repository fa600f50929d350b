"""Admin for operations (durable jobs): a filtered list, a live page with a progress bar, cancel.

The operation page is server-rendered and refreshes itself with a meta
refresh every 2 s while the operation is queued or running, so it works
without JavaScript. Reading a page never writes. Cancel is a CSRF-protected
POST behind a confirmation page.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.timesince import timesince

from opsapp.models import ACTIVE_STATES, Operation, OperationKind, OperationState
from opsapp.models.operation import UNCANCELLABLE_WHILE_RUNNING
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError
from opsapp.services.snapshots.estimate import UPPER_BOUND

PERM_CANCEL = "opsapp.cancel_operation"
REFRESH_SECONDS = 2


def progress_text(op: Operation) -> str:
    """ "12.0 MB written of about 40.0 MB (30%)", "12.0 MB of 40.0 MB restored", "step 1 of 3", or ""."""
    if op.progress_total is None and op.progress_done is None:
        return ""
    done, total = op.progress_done or 0, op.progress_total
    if op.progress_unit == "bytes":
        pct = f" ({op.percent}%)" if op.percent is not None else ""
        if op.kind == OperationKind.RESTORE:
            of = f" of {filesizeformat(total)}" if total else ""
            return f"{filesizeformat(done)}{of} of the archive fed to pg_restore{pct}"
        about = ""
        if op.progress_estimate and op.state in ACTIVE_STATES:
            about = "at most " if op.progress_estimate.startswith(UPPER_BOUND) else "about "
        of = f" of {about}{filesizeformat(total)}" if total else ""
        return f"{filesizeformat(done)} written{of}{pct}"
    if op.kind == OperationKind.REHEARSAL and total:
        if done == 0:
            return "restoring the snapshot into a scratch copy"
        return f"copy restored; {done - 1} of {total - 1} steps reverted on it"
    if op.progress_unit == "steps" and total:
        return f"{done} of {total} steps reverted"
    return ""


def result_text(op: Operation) -> str:
    """What a finished operation did, in one sentence ("" while it runs or when it failed)."""
    result = op.result or {}
    if not isinstance(result, dict):
        return ""
    if op.kind == OperationKind.REHEARSAL and result.get("message"):
        return str(result["message"])  # a failed rehearsal's finding is its result too
    if op.state != OperationState.SUCCEEDED:
        return ""
    if op.kind == OperationKind.SNAPSHOT:
        attached = f", attached to rollback request #{op.request_id}" if op.request_id else ""
        return (
            f"Snapshot #{result.get('snapshot')} of {op.target.name} taken and verified "
            f"({filesizeformat(result.get('size') or 0)}){attached}."
        )
    if op.kind == OperationKind.DOWNGRADE:
        heads = ", ".join(result.get("heads") or []) or "base (no revision)"
        return f"{str(result.get('message', '')).split('; heads now')[0]}. Heads now: {heads}."
    if op.kind == OperationKind.RESTORE:
        tables = result.get("row_counts") or {}
        rows = sum(int(n) for n in tables.values())
        heads = ", ".join(result.get("heads") or []) or "(empty)"
        return (
            f"Snapshot #{result.get('snapshot')} of {op.target.name} restored into destination "
            f"{result.get('destination')!r} ({result.get('into')}): alembic_version {heads} matches the snapshot; "
            f"{len(tables)} table(s), {rows} row(s)."
        )
    if op.kind == OperationKind.SYNC:
        return (
            f"Synced {op.target.name}: {result.get('state')}, heads {', '.join(result.get('heads') or []) or '(none)'}."
        )
    return ""


def eta_text(op: Operation) -> str:
    """The time left, said to be an estimate, or why it cannot be told ("" when it does not apply)."""
    from opsapp.services.operations.queue import eta_seconds  # lazy: the queue module pulls in Alembic

    if op.state != OperationState.RUNNING or op.progress_unit != "bytes" or not op.progress_done:
        return ""
    if not op.progress_total:
        return "time left unknown: " + (op.progress_estimate or "no estimate of the final size")
    eta = eta_seconds(op)
    if eta is None:
        if op.progress_done >= op.progress_total and op.progress_estimate:
            return "past the estimated size: the end cannot be told"
        return ""
    minutes, seconds = divmod(eta, 60)
    about = "at most" if (op.progress_estimate or "").startswith(UPPER_BOUND) else "about"
    left = f"{about} {minutes} min {seconds} s left" if minutes else f"{about} {seconds} s left"
    return f"{left} (an estimate at the rate so far)"


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "target", "state", "progress_display", "asked_by", "queued", "worker")
    list_filter = ("state", "kind", "target")
    list_select_related = ("target",)
    search_fields = ("requested_by_username", "worker_host", "error")
    date_hierarchy = "queued_at"
    ordering = ("-queued_at", "-id")
    show_full_result_count = False
    change_form_template = "admin/opsapp/operation/change_form.html"
    fields = (
        "kind",
        "state",
        "target",
        "request",
        "snapshot",
        "retry_of",
        "attempt",
        "asked_by",
        "worker",
        "queued_at",
        "started_at",
        "finished_at",
        "heartbeat_at",
        "progress_label",
        "cancel_requested_by",
        "error",
    )  # the result is shown in words above the fields (no raw JSON on the page)
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Operation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Operation | None = None) -> bool:
        return False

    @admin.display(description="worker")
    def worker(self, obj: Operation) -> str:
        return f"{obj.worker_host} (pid {obj.worker_pid})" if obj.worker_pid else "-"

    @admin.display(description="progress")
    def progress_display(self, obj: Operation) -> str:
        if obj.progress_unit == "steps" and obj.progress_total:
            return f"{obj.progress_done or 0}/{obj.progress_total} steps"
        if obj.progress_unit == "bytes" and obj.progress_done is not None:
            return f"{obj.percent}%" if obj.percent is not None else filesizeformat(obj.progress_done)
        return "-"

    @admin.display(description="asked by", ordering="requested_by_username")
    def asked_by(self, obj: Operation) -> str:
        return obj.requested_by_username or "-"

    @admin.display(description="queued", ordering="queued_at")
    def queued(self, obj: Operation) -> str:
        return f"{timesince(obj.queued_at, timezone.now())} ago" if obj.queued_at else "-"

    def get_urls(self):
        custom = [
            path(
                "<path:object_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="opsapp_operation_cancel",
            ),
        ]
        return custom + super().get_urls()

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        op = (
            Operation.objects.select_related("target").filter(pk=object_id).first()
            if object_id.isascii() and object_id.isdigit()
            else None
        )
        extra = dict(extra_context or {})
        if op is not None:
            active = op.state in ACTIVE_STATES
            extra.update(
                {
                    "op": op,
                    "op_active": active,
                    "refresh_seconds": REFRESH_SECONDS if active else None,
                    "op_percent": op.percent,
                    "op_progress": progress_text(op),
                    "op_result": result_text(op),
                    "op_eta": eta_text(op),
                    "op_estimate": op.progress_estimate if active and op.progress_total else "",
                    "op_destination": (op.params or {}).get("destination", "")
                    if op.kind == OperationKind.RESTORE
                    else "",
                    "may_cancel": self._may_cancel(request, op),
                }
            )
        return super().change_view(request, object_id, form_url, extra)

    def _may_cancel(self, request: HttpRequest, op: Operation) -> bool:
        if not request.user.has_perm(PERM_CANCEL) or op.cancel_requested_at is not None:
            return False
        if op.state == OperationState.QUEUED:
            return True
        return op.state == OperationState.RUNNING and op.kind not in UNCANCELLABLE_WHILE_RUNNING

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET: the confirmation page. POST: cancel (queued) or ask the worker to stop (running)."""
        if not request.user.has_perm(PERM_CANCEL):
            raise PermissionDenied
        op = get_object_or_404(
            Operation.objects.select_related("target"),
            pk=object_id if object_id.isascii() and object_id.isdigit() else 0,
        )
        back = reverse("admin:opsapp_operation_change", args=[op.pk])
        if request.method == "POST":
            try:
                from opsapp.services.operations.queue import cancel_operation

                op = cancel_operation(op.pk, actor=Actor.from_request(request))
            except OpsError as exc:
                messages.error(request, f"Not cancelled: {exc}")
            else:
                if op.state == OperationState.CANCELLED:
                    messages.success(request, f"Operation #{op.pk} cancelled before it started.")
                else:
                    messages.warning(request, f"Operation #{op.pk}: the worker was asked to stop it.")
            return HttpResponseRedirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Cancel operation #{op.pk}?",
            "opts": self.opts,
            "op": op,
            "back": back,
        }
        return TemplateResponse(request, "admin/opsapp/operation/cancel_confirm.html", context)
