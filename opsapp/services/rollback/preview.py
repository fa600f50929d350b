"""A read-only preview of the gate for the request page: no lock taken, nothing changes."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from opsapp.models import RollbackRequest
from opsapp.services.errors import OpsError
from opsapp.services.locks import current_holder
from opsapp.services.rollback.execute import heads_or_problem
from opsapp.services.rollback.gate import GateCheck, check_plan, check_rehearsal, check_request, check_snapshot
from opsapp.targets import TargetConfig, get_target


def gate_status(request: RollbackRequest) -> list[GateCheck]:
    """A read-only preview of the gate for the request page: no lock taken, nothing changes, no refusal audited.

    The SQL preview is not re-rendered here (admin pages never import
    migration files); the fingerprint check covers changed files, and the
    preview is re-rendered and compared at execution.
    """
    checks: list[GateCheck] = []
    message = check_request(request)
    checks.append(GateCheck("request", message is None, message or "pending; the code went to an allowed approver"))
    try:
        config = get_target(request.target.name)
    except OpsError as exc:
        checks += [GateCheck(g, False, str(exc)) for g in ("snapshot", "rehearsal", "plan", "lock")]
        checks.append(GateCheck("code", None, "entered at execution"))
        return checks
    heads, problem = heads_or_problem(config)
    message = check_snapshot(request, heads, problem)
    checks.append(GateCheck("snapshot", message is None, message or f"snapshot #{request.snapshot_id} verified"))
    checks.append(_rehearsal_preview(request, config))
    message, _ = check_plan(request, config, heads, regenerate=False, heads_problem=problem)
    checks.append(
        GateCheck(
            "plan",
            message is None,
            message or "heads and script directory unchanged; the SQL preview is re-checked at execution",
        )
    )
    try:
        holder = current_holder(config)
    except OpsError as exc:
        checks.append(GateCheck("lock", False, str(exc)))
    else:
        if holder is None:
            checks.append(GateCheck("lock", True, "free"))
        else:
            checks.append(GateCheck("lock", False, f"held by {holder.describe()}"))
    checks.append(_code_preview(request))
    return checks


def _rehearsal_preview(request: RollbackRequest, config: TargetConfig) -> GateCheck:
    from opsapp.services.rehearsal.summary import latest_rehearsal, rehearsal_required, result_line

    message = check_rehearsal(request, config)
    if message:
        return GateCheck("rehearsal", False, message)
    rehearsal = latest_rehearsal(request)
    if rehearsal is None:
        return GateCheck("rehearsal", True, "not required (OPS_REQUIRE_REHEARSAL)")
    required = "" if rehearsal_required(config.is_postgresql) else " (not required)"
    return GateCheck("rehearsal", True, result_line(rehearsal) + required)


def _code_preview(request: RollbackRequest) -> GateCheck:
    if not request.code_hash:
        return GateCheck("code", False, "no active code; issue one")
    if request.code_used_at is not None:
        # Spent when a downgrade was queued: either that operation is still on its way, or it did not run.
        from opsapp.models import ACTIVE_STATES, Operation

        op = Operation.objects.filter(request=request, state__in=ACTIVE_STATES).order_by("-id").first()
        if op is not None:
            return GateCheck("code", True, f"accepted; the downgrade is queued as operation #{op.pk} ({op.state})")
        return GateCheck(
            "code", False, "already used by a queued downgrade that did not run (see its operation); re-issue one"
        )
    if request.code_expires_at and timezone.now() >= request.code_expires_at:
        return GateCheck("code", False, "the code expired; re-issue one")
    left = max(0, settings.OPS_CODE_MAX_ATTEMPTS - request.code_attempts)
    until = timezone.localtime(request.code_expires_at).strftime("%H:%M:%S %Z") if request.code_expires_at else "?"
    return GateCheck("code", None, f"entered at execution (valid until {until}; {left} attempt(s) left)")
