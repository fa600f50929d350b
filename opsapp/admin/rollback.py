"""Admin for rollback requests: request a downgrade, follow its gate, attach a snapshot, execute with a code.

Thin edge: every action checks its permission on the server, calls one
service of `opsapp.services.rollback.requests` / `opsapp.services.snapshots.lifecycle`, and
shows the service's message. Nobody can delete a request or change a stored
field (`has_change_permission` is False); the actions below have their own
permissions:

  add_rollbackrequest      request a downgrade
  change_rollbackrequest   attach a snapshot, re-issue the code, cancel
  take_snapshot            take a snapshot now (and attach it)
  execute_rollbackrequest  execute with a verification code

A GET changes nothing: a request left `running` by a dead executor is marked
`interrupted` by cron (`execute_rollback --reconcile`) or by the explicit
"Reconcile" POST (change or execute permission), never by a page load.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from opsapp.admin.rollback_forms import (
    AttachSnapshotForm,
    ExecuteForm,
    RequestDowngradeForm,
    max_code_attempts,
    sql_lines,
    verified_snapshots,
)
from opsapp.models import (
    ACTIVE_STATES,
    OperationKind,
    OperationState,
    RehearsalStatus,
    RollbackRequest,
    RollbackStatus,
)
from opsapp.services.actors import Actor
from opsapp.services.errors import GateRefused, OpsError

PERM_ADD = "opsapp.add_rollbackrequest"
PERM_CHANGE = "opsapp.change_rollbackrequest"
PERM_EXECUTE = "opsapp.execute_rollbackrequest"
PERM_TAKE_SNAPSHOT = "opsapp.take_snapshot"
PERM_EXPORT_AUDIT = "opsapp.export_auditevent"


def _rollback():
    # Imported on use: the admin registry loads at start-up and must not pull
    # Alembic and the gate machinery into every process (manage.py check, cron).
    from opsapp.services.rollback import requests as rollback

    return rollback


def _require(request: HttpRequest, *perms: str) -> None:
    """Server-side permission check; hidden buttons are not the protection."""
    if not all(request.user.has_perm(perm) for perm in perms):
        raise PermissionDenied


def may_export_evidence(user) -> bool:
    """Auditors (who may export the audit log) and operators (who may act on requests)."""
    return user.has_perm(PERM_EXPORT_AUDIT) or user.has_perm(PERM_CHANGE)


def safe_gate_status(obj: RollbackRequest) -> list:
    """The gate preview, or one failed pseudo-check if it cannot be computed (never a 500)."""
    rollback = _rollback()
    try:
        return rollback.gate_status(obj)
    except OpsError as exc:
        return [rollback.GateCheck(gate="request", ok=False, message=str(exc))]


def rehearsal_context(obj: RollbackRequest) -> dict:
    """The latest rehearsal of the request (any snapshot or plan), whether it counts, and where it disagrees."""
    from opsapp.services.rehearsal.summary import rehearsal_required, result_line, static_differences

    rehearsal = obj.rehearsals.order_by("-started_at", "-id").first()
    # The newest rehearsal operation: queued or running (followed on its page), or refused before any copy.
    operation = obj.operations.filter(kind=OperationKind.REHEARSAL).order_by("-queued_at", "-id").first()
    active = operation is not None and operation.state in ACTIVE_STATES
    context: dict = {
        "rehearsal": rehearsal,
        "rehearsal_required": rehearsal_required(_is_pg(obj)),
        "rehearsal_operation": operation,
        # One at a time per request: while one is queued or running (as an operation, or started by
        # `rehearse_rollback` without one), the Rehearse button gives way to a note pointing at it.
        "rehearsal_in_progress": active or (rehearsal is not None and rehearsal.status == RehearsalStatus.RUNNING),
        "rehearsal_in_progress_operation": operation if active else None,
        "rehearsal_operation_refused": operation is not None
        and operation.state == OperationState.FAILED
        and not (operation.result or {}).get("rehearsal"),
    }
    if rehearsal is None:
        return context
    before, after = rehearsal.rows_before or {}, rehearsal.rows_after or {}
    context.update(
        rehearsal_line=result_line(rehearsal),
        rehearsal_counts=rehearsal.snapshot_id == obj.snapshot_id
        and rehearsal.plan_fingerprint == obj.plan_fingerprint,
        rehearsal_diffs=static_differences(obj, rehearsal),
        rehearsal_rows=[
            {
                "table": t,
                "before": n,
                "after": after.get(t),
                "lost": (rehearsal.destroyed or {}).get("rows", {}).get(t, 0),
            }
            for t, n in sorted(before.items())
        ],
    )
    return context


def _is_pg(obj: RollbackRequest) -> bool:
    from opsapp.targets import get_target

    try:
        return get_target(obj.target.name).is_postgresql
    except OpsError:
        return False


def with_last_code_refusal(obj: RollbackRequest, checks: list) -> list:
    """Gate 6 (code) cannot be previewed; after a wrong code it shows that refusal instead of "at execution"."""
    if obj.last_refusal_gate != "code" or not obj.code_attempts:
        return checks
    return mark_refusal(
        checks, "code", f"Last attempt refused: {obj.last_refusal_message} ({obj.code_attempts} wrong so far)"
    )


def may_reconcile(user) -> bool:
    """Users who may act on requests may mark a dead executor's request interrupted (cron does it too)."""
    return user.has_perm(PERM_CHANGE) or user.has_perm(PERM_EXECUTE)


@admin.register(RollbackRequest)
class RollbackRequestAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "target",
        "to_short",
        "status",
        "requested_by_username",
        "created_at",
        "gates",
        "snapshot_link",
    )
    list_display_links = ("id", "target")
    list_filter = ("status", "target", "created_at")
    list_select_related = ("target", "snapshot")
    search_fields = ("=id", "reason", "to_revision", "to_revision_input", "requested_by_username")
    date_hierarchy = "created_at"
    # The request page shows its record in panels (templates .../rollbackrequest/includes/): the
    # result first, then the gate, the actions, the code, the plan and the SQL. The stored JSON fields are
    # not repeated below them as raw values.
    fieldsets = ((None, {"fields": ("target", "status", "requested_by_username", "reason", "created_at")}),)
    readonly_fields = ("code_attempts_display",)

    # ------------------------------------------------------------ permissions
    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        # Stored fields never change through a form; actions check their own permissions.
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    # ---------------------------------------------------------------- columns
    @admin.display(description="to revision", ordering="to_revision")
    def to_short(self, obj: RollbackRequest) -> str:
        return obj.to_revision[:12] if obj.to_revision != "base" else "base"

    @admin.display(description="gate status")
    def gates(self, obj: RollbackRequest) -> str:
        # Stored fields only: no connection to the target per row (the live checklist is on the request page).
        if obj.status != RollbackStatus.PENDING:
            return "-"
        from opsapp.services.rollback.gate import stored_summary

        return stored_summary(obj)

    @admin.display(description="snapshot", ordering="snapshot")
    def snapshot_link(self, obj: RollbackRequest) -> str:
        if not obj.snapshot_id:
            return "-"
        url = reverse("admin:opsapp_snapshot_change", args=[obj.snapshot_id])
        return format_html('<a href="{}">#{} ({})</a>', url, obj.snapshot_id, obj.snapshot.status)

    @admin.display(description="wrong code attempts")
    def code_attempts_display(self, obj: RollbackRequest) -> str:
        return f"{obj.code_attempts} of {max_code_attempts()}"

    # ------------------------------------------------------------------- urls
    def get_urls(self):
        wrap = self.admin_site.admin_view
        custom = [
            path("<path:object_id>/attach/", wrap(self.attach_view), name="opsapp_rollbackrequest_attach"),
            path(
                "<path:object_id>/take-snapshot/",
                wrap(self.take_snapshot_view),
                name="opsapp_rollbackrequest_takesnapshot",
            ),
            path("<path:object_id>/reissue/", wrap(self.reissue_view), name="opsapp_rollbackrequest_reissue"),
            path("<path:object_id>/cancel/", wrap(self.cancel_view), name="opsapp_rollbackrequest_cancel"),
            path("<path:object_id>/execute/", wrap(self.execute_view), name="opsapp_rollbackrequest_execute"),
            path("<path:object_id>/rehearse/", wrap(self.rehearse_view), name="opsapp_rollbackrequest_rehearse"),
            path("<path:object_id>/evidence/", wrap(self.evidence_view), name="opsapp_rollbackrequest_evidence"),
            path("reconcile/", wrap(self.reconcile_view), name="opsapp_rollbackrequest_reconcile"),
        ]
        return custom + super().get_urls()

    def _get(self, request: HttpRequest, object_id: str) -> RollbackRequest:
        try:
            pk = int(object_id)
        except ValueError:
            raise Http404("No such rollback request.") from None
        return get_object_or_404(RollbackRequest.objects.select_related("target", "snapshot"), pk=pk)

    def _back(self, obj: RollbackRequest) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:opsapp_rollbackrequest_change", args=[obj.pk]))

    def panel_context(self, request: HttpRequest, obj: RollbackRequest) -> dict:
        """What the request page and the execute page show besides the stored fields."""
        user = request.user
        pending = obj.status == RollbackStatus.PENDING
        return {
            "rr": obj,
            "gate_checks": with_last_code_refusal(obj, safe_gate_status(obj)) if pending else [],
            "sql_lines": sql_lines(obj.sql_preview, obj.destructive),
            "destructive": obj.destructive or [],
            # The destructive figures were counted at request time; after a downgrade their tables may be gone.
            "downgrade_ran": obj.status in (RollbackStatus.SUCCEEDED, RollbackStatus.INTERRUPTED),
            "non_transactional": obj.non_transactional or [],
            "max_code_attempts": max_code_attempts(),
            "is_pending": pending,
            "attach_form": AttachSnapshotForm(target_id=obj.target_id, initial={"snapshot": obj.snapshot_id}),
            "has_verified_snapshots": verified_snapshots(obj.target_id).exists(),
            "execute_form": ExecuteForm(),
            "can_change": user.has_perm(PERM_CHANGE),
            "can_execute": user.has_perm(PERM_EXECUTE),
            "can_take_snapshot": user.has_perm(PERM_TAKE_SNAPSHOT) and user.has_perm(PERM_CHANGE),
            "is_running": obj.status == RollbackStatus.RUNNING,
            "is_approver": user.has_perm("opsapp.approve_rollbackrequest"),
            "is_code_recipient": user.get_username() in (obj.code_recipients or []),
            "code_expired": bool(obj.code_expires_at and obj.code_expires_at <= timezone.now()),
            "has_any_action": pending and (user.has_perm(PERM_CHANGE) or user.has_perm(PERM_EXECUTE)),
            "can_reconcile": may_reconcile(user),
            **rehearsal_context(obj),
            "can_export_evidence": may_export_evidence(user),
            "downgrade_operations": list(obj.operations.filter(kind=OperationKind.DOWNGRADE).order_by("-id")[:5]),
        }

    # ------------------------------------------------------------------ views
    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        running = may_reconcile(request.user) and RollbackRequest.objects.filter(status=RollbackStatus.RUNNING).exists()
        extra_context = {**(extra_context or {}), "offer_reconcile": running}
        return super().changelist_view(request, extra_context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None) -> HttpResponse:
        obj = self.get_object(request, object_id)
        if obj is not None and self.has_view_permission(request, obj) and request.method == "GET":
            extra_context = {**(extra_context or {}), **self.panel_context(request, obj)}
        return super().change_view(request, object_id, form_url, extra_context)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None) -> HttpResponse:
        """ "Request downgrade": plan, preview, analyse and send the code, through create_request."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = RequestDowngradeForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                try:
                    obj = _rollback().create_request(
                        target_name=data["target"],
                        to=data["to"],
                        reason=data["reason"],
                        actor=Actor.from_request(request),
                        snapshot_id=data["snapshot"].pk if data["snapshot"] else None,
                    )
                except OpsError as exc:
                    form.add_error(None, str(exc))
                else:
                    if obj.code_recipients and not obj.last_refusal_gate:
                        messages.success(
                            request,
                            f"Rollback request #{obj.pk} created. A verification code was sent to: "
                            f"{', '.join(obj.code_recipients)}.",
                        )
                    else:
                        # Created, but it cannot proceed (e.g. nobody may approve it): say why.
                        messages.warning(
                            request,
                            f"Rollback request #{obj.pk} created, but no code was sent: "
                            f"{obj.last_refusal_message or 'no approver'}",
                        )
                    return self._back(obj)
        else:
            form = RequestDowngradeForm(
                initial={"target": request.GET.get("target", ""), "to": request.GET.get("to", "")}
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Request downgrade",
            "opts": self.opts,
            "form": form,
            "adminform_errors": form.non_field_errors(),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/opsapp/rollbackrequest/request_form.html", context)

    def attach_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        _require(request, PERM_CHANGE)
        if request.method != "POST":
            return _method_not_allowed()
        obj = self._get(request, object_id)
        form = AttachSnapshotForm(request.POST, target_id=obj.target_id)
        if not form.is_valid():
            messages.error(request, "Pick a verified snapshot of this target.")
            return self._back(obj)
        try:
            _rollback().attach_snapshot(obj, form.cleaned_data["snapshot"].pk, actor=Actor.from_request(request))
        except OpsError as exc:
            messages.error(request, f"Snapshot not attached: {exc}")
        else:
            messages.success(request, f"Snapshot #{form.cleaned_data['snapshot'].pk} attached.")
        return self._back(obj)

    def take_snapshot_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        _require(request, PERM_TAKE_SNAPSHOT, PERM_CHANGE)
        if request.method != "POST":
            return _method_not_allowed()
        obj = self._get(request, object_id)
        from opsapp.services.operations.queue import enqueue

        try:
            op = enqueue(OperationKind.SNAPSHOT, obj.target.name, actor=Actor.from_request(request), attach_to=obj)
        except OpsError as exc:
            messages.error(request, f"Snapshot not queued: {exc}")
            return self._back(obj)
        messages.success(
            request, f"Snapshot queued as operation #{op.pk}; a worker takes it, verifies it and attaches it."
        )
        return HttpResponseRedirect(reverse("admin:opsapp_operation_change", args=[op.pk]))

    def reissue_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        _require(request, PERM_CHANGE)
        if request.method != "POST":
            return _method_not_allowed()
        obj = self._get(request, object_id)
        try:
            recipients = _rollback().issue_code(obj, actor=Actor.from_request(request))
        except OpsError as exc:
            messages.error(request, f"No code issued: {exc}")
        else:
            messages.success(request, f"A new code was sent to: {', '.join(recipients)}. The old code no longer works.")
        return self._back(obj)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        _require(request, PERM_CHANGE)
        if request.method != "POST":
            return _method_not_allowed()
        obj = self._get(request, object_id)
        try:
            _rollback().cancel_request(obj, actor=Actor.from_request(request))
        except OpsError as exc:
            messages.error(request, f"Not cancelled: {exc}")
        else:
            messages.success(request, f"Rollback request #{obj.pk} cancelled.")
        return self._back(obj)

    def rehearse_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST only: queue a rehearsal of the request's plan; the operation page follows it."""
        _require(request, PERM_CHANGE)
        if request.method != "POST":
            return _method_not_allowed()
        obj = self._get(request, object_id)
        from opsapp.services.operations.queue import enqueue_rehearsal

        try:
            op = enqueue_rehearsal(
                obj.pk, actor=Actor.from_request(request), round_trip=request.POST.get("round_trip") == "1"
            )
        except OpsError as exc:
            messages.error(request, f"Rehearsal not queued: {exc}")
            return self._back(obj)
        messages.success(
            request,
            f"Rehearsal queued as operation #{op.pk}; a worker restores the snapshot into a scratch copy, "
            "then runs the plan there. The result appears on the request's page, and the approvers get it by email "
            "with a new verification code (the current code then stops working).",
        )
        return HttpResponseRedirect(reverse("admin:opsapp_operation_change", args=[op.pk]))

    def evidence_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: the request's evidence bundle as a download (exporting it is audited)."""
        if not may_export_evidence(request.user):
            raise PermissionDenied
        if request.method != "POST":
            return _method_not_allowed()
        obj = self._get(request, object_id)
        from opsapp.services.audit.evidence import build_evidence

        try:
            name, data = build_evidence(obj.pk, actor=Actor.from_request(request))
        except OpsError as exc:
            messages.error(request, f"No evidence bundle: {exc}")
            return self._back(obj)
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    def reconcile_view(self, request: HttpRequest) -> HttpResponse:
        """POST only: mark `running` requests whose executor died (target lock free) as interrupted."""
        if not may_reconcile(request.user):
            raise PermissionDenied
        if request.method != "POST":
            return _method_not_allowed()
        try:
            found = _rollback().reconcile(actor=Actor.from_request(request))
        except OpsError as exc:
            messages.error(request, f"Could not reconcile running requests: {exc}")
        else:
            for req in found:
                messages.warning(request, f"Rollback request #{req.pk} was interrupted: {req.error or req.status}")
            if not found:
                messages.info(request, "No running request was left behind by a dead process.")
        back = request.POST.get("next", "")
        if not back.startswith(reverse("admin:opsapp_rollbackrequest_changelist")):
            back = reverse("admin:opsapp_rollbackrequest_changelist")
        return HttpResponseRedirect(back)

    # An error report (ADMINS email, Sentry) must not carry the verification code.
    @method_decorator(sensitive_post_parameters("code"))
    def execute_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The confirmation step (Django's delete-confirmation pattern), then the gate, then the queue.

        GET: restates target, environment, from, to, steps and the rows destroyed, and asks for the code.
        POST with `confirmed=yes` (the confirmation page's button): gates 1-6 here (the code last, spent),
        then the downgrade is queued; a worker checks gates 1-5 again under the target's lock.
        A POST without it (a stale form, a script) only shows the confirmation page: nothing runs.
        """
        _require(request, PERM_EXECUTE)
        obj = self._get(request, object_id)
        error = refused_gate = None
        form = ExecuteForm(request.POST or None)
        confirmed = request.POST.get("confirmed") == "yes"
        if request.method == "POST" and confirmed and form.is_valid():
            from opsapp.services.operations.downgrade import enqueue_downgrade

            try:
                # Gates 1-6 here, the code last and spent; a worker checks gates 1-5 again under the lock.
                op = enqueue_downgrade(obj.pk, code=form.cleaned_data["code"], actor=Actor.from_request(request))
            except GateRefused as exc:
                error = f"Refused by gate '{exc.gate}': {exc}"
                refused_gate = exc.gate
            except OpsError as exc:
                error = f"The downgrade was not queued: {exc}"
            else:
                messages.success(
                    request,
                    f"Code accepted; the downgrade is queued as operation #{op.pk}. A worker checks the gate "
                    "again under the target's lock, then runs it.",
                )
                return HttpResponseRedirect(reverse("admin:opsapp_operation_change", args=[op.pk]))
            obj.refresh_from_db()
        elif request.method == "POST" and not confirmed:
            form = ExecuteForm()
        elif request.method not in ("GET", "HEAD", "POST"):
            return _method_not_allowed()
        panel = self.panel_context(request, obj)
        if refused_gate:
            panel["gate_checks"] = mark_refusal(panel["gate_checks"], refused_gate, error)
        context = {
            **self.admin_site.each_context(request),
            **panel,
            "title": f"Execute rollback request #{obj.pk}?" if not error else f"Rollback request #{obj.pk} refused",
            "opts": self.opts,
            "original": obj,
            "execute_form": ExecuteForm() if error else form,
            "execute_error": error,
            "refused_gate": refused_gate,
            # The fixes sit in the gate table here; after a refusal, in the box under the error instead.
            "show_fix_forms": not refused_gate,
            "destroyed": destroyed_summary(obj.destructive or []),
        }
        return TemplateResponse(request, "admin/opsapp/rollbackrequest/execute.html", context)


def mark_refusal(checks: list, gate: str, message: str) -> list:
    """The gate preview with the gate that just refused shown as refusing (gate 6, the code, cannot be previewed)."""
    from opsapp.services.rollback.gate import GateCheck

    return [GateCheck(gate=c.gate, ok=False, message=message) if c.gate == gate else c for c in checks]


def destroyed_summary(destructive: list[dict]) -> list[str]:
    """One plain line per destructive statement: what goes, and how many rows or values (counted at request)."""
    lines = []
    for d in destructive:
        what = d.get("table") or "?"
        if d.get("column"):
            what += f".{d['column']}"
        count = d.get("non_null") if d.get("column") else d.get("rows")
        unit = "non-null values" if d.get("column") else "rows"
        amount = f"{count} {unit}" if count is not None else f"an unknown number of {unit}"
        lines.append(f"{d.get('kind', 'change')} {what}: {amount}")
    return lines


def _method_not_allowed() -> HttpResponse:
    return HttpResponseNotAllowed(["POST"])
