"""The downgrade gate (docs/design.md): request, snapshot, rehearsal, plan, lock, code.

Each check returns None when its gate passes or the refusal message. `refuse`
records a refusal on the request and in the audit log and returns the
GateRefused to raise. Nothing here touches the target except to read its
heads; the lock itself is taken by the executor (rollback.execute).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, RollbackRequest, RollbackStatus, SnapshotStatus
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.catalog.sync import script_fingerprint
from opsapp.services.errors import GateRefused, OpsError
from opsapp.services.rollback.codes import code_matches, recipients_still_allowed
from opsapp.services.rollback.expiry import duration_text, stale_message
from opsapp.services.rollback.fingerprint import first_difference
from opsapp.services.rollback.plan import Preview, render_preview
from opsapp.services.snapshots.lifecycle import snapshot_file_problem
from opsapp.targets import TargetConfig

GATES = ("request", "snapshot", "rehearsal", "plan", "lock", "code")


@dataclass
class GateCheck:
    gate: str
    ok: bool | None
    message: str


def refuse(
    request: RollbackRequest, gate: str, message: str, actor: Actor, detail: dict[str, Any] | None = None
) -> GateRefused:
    """Record a refusal (request fields + ROLLBACK_REFUSED audit) and return the exception to raise."""
    RollbackRequest.objects.filter(pk=request.pk).update(last_refusal_gate=gate, last_refusal_message=message)
    request.last_refusal_gate, request.last_refusal_message = gate, message
    append_event(
        action=AuditAction.ROLLBACK_REFUSED,
        outcome=AuditOutcome.REFUSED,
        actor=actor,
        message=f"Refused at gate '{gate}': {message}",
        **request_context(request),
        detail={"gate": gate, **(detail or {})},
    )
    return GateRefused(message, gate=gate, target=request.target.name, heads=list(request.from_heads))


# ------------------------------------------------------------------ gate 1
def check_request(request: RollbackRequest) -> str | None:
    stale = stale_message(request)
    if stale:
        return stale
    if request.status != RollbackStatus.PENDING:
        why = {
            RollbackStatus.EXPIRED: "; create a new request",
            RollbackStatus.LOCKED: f" (locked after {request.code_attempts} wrong codes)",
            RollbackStatus.SUCCEEDED: "; its code was already used",
            RollbackStatus.FAILED: "; its code was already used",
            RollbackStatus.INTERRUPTED: "; its code was already used",
            RollbackStatus.RUNNING: "; its code was already used and the downgrade is running",
        }.get(request.status, "")
        return f"Request #{request.pk} is {request.get_status_display()}, not pending{why}."
    if not request.code_hash:
        if request.last_refusal_gate == "request" and request.last_refusal_message:
            return request.last_refusal_message
        return f"No verification code has been issued for request #{request.pk}; issue one first."
    if not recipients_still_allowed(request):
        went_to = ", ".join(request.code_recipients) or "nobody"
        rule = " (the requester may not approve: two-person rule)" if settings.OPS_TWO_PERSON_RULE else ""
        return (
            f"The code of request #{request.pk} went to {went_to}, none of whom may approve it now{rule}; "
            "re-issue the code."
        )
    return None


# ------------------------------------------------------------------ gate 2
def check_snapshot(request: RollbackRequest, current_heads: list[str] | None, heads_problem: str = "") -> str | None:
    snap = request.snapshot
    target = request.target.name
    if snap is None:
        return (
            f"No snapshot is attached to request #{request.pk}; attach a verified snapshot of target "
            f"{target!r} taken at its current heads."
        )
    if snap.target_id != request.target_id:
        return f"Snapshot #{snap.pk} belongs to target {snap.target.name!r}, not {target!r}."
    if snap.status != SnapshotStatus.VERIFIED:
        return f"Snapshot #{snap.pk} is {snap.status}, not verified."
    if current_heads is None:
        return f"Cannot compare snapshot #{snap.pk} with the target's heads: {heads_problem}"
    if sorted(snap.heads) != sorted(current_heads):
        return (
            f"Snapshot #{snap.pk} was taken at heads {_fmt(snap.heads)}, but target {target!r} is now at "
            f"{_fmt(current_heads)}; take a new snapshot."
        )
    age = (timezone.now() - snap.started_at).total_seconds()
    limit = settings.OPS_SNAPSHOT_MAX_AGE_SECONDS
    if age > limit:
        return (
            f"Snapshot #{snap.pk} is {duration_text(age)} old, older than the limit of {duration_text(limit)} "
            "(OPS_SNAPSHOT_MAX_AGE_SECONDS); take a new snapshot."
        )
    problem = snapshot_file_problem(snap)
    if problem:
        return f"Snapshot file check failed: {problem}"
    return None


# ------------------------------------------------------------------ gate 3
def check_rehearsal(request: RollbackRequest, config: TargetConfig) -> str | None:
    """When rehearsals are required: the latest rehearsal of this plan on this snapshot succeeded.

    A failed (or interrupted) latest rehearsal refuses with its reason; a
    rehearsal of another snapshot or plan does not count.
    """
    from opsapp.services.rehearsal.summary import failure_text, latest_rehearsal, rehearsal_required

    if not rehearsal_required(config.is_postgresql):
        return None
    rehearsal = latest_rehearsal(request)
    if rehearsal is None:
        return (
            f"Request #{request.pk} has no rehearsal of its plan on snapshot #{request.snapshot_id} "
            f"(OPS_REQUIRE_REHEARSAL); rehearse it first: rehearse_rollback {request.pk}."
        )
    if rehearsal.status != "succeeded":
        return (
            f"Rehearsal #{rehearsal.pk} of this plan on a copy of snapshot #{rehearsal.snapshot_id} "
            f"{rehearsal.status}: {failure_text(rehearsal)}"
        )
    return None


# ------------------------------------------------------------------ gate 4
def check_plan(
    request: RollbackRequest,
    config: TargetConfig,
    current_heads: list[str] | None,
    *,
    regenerate: bool,
    heads_problem: str = "",
) -> tuple[str | None, Preview | None]:
    """Heads, script fingerprint, (re-generated) SQL preview, transactional safety.

    With `regenerate`, the preview is rendered again from the script files
    and compared by its plan fingerprint (per step: the revisions, the
    migration statements and the heads after it; not the version-table
    bookkeeping, whose order varies between processes); the fresh Preview is
    returned for the executor.
    """
    target = request.target.name
    if current_heads is None:
        return f"Cannot read the current heads of target {target!r}: {heads_problem}", None
    if sorted(current_heads) != sorted(request.from_heads):
        return (
            f"The heads of target {target!r} moved since the request: now {_fmt(current_heads)}, "
            f"the plan starts from {_fmt(request.from_heads)}; create a new request."
        ), None
    try:
        fingerprint = script_fingerprint(config)
    except OpsError as exc:
        return f"The script directory of target {target!r} cannot be read: {exc}", None
    if fingerprint != request.script_fingerprint:
        return (
            f"The script directory of target {target!r} changed since the preview was made "
            f"(fingerprint {request.script_fingerprint[:12]}… is now {fingerprint[:12]}…); create a new request."
        ), None
    if request.non_transactional:
        reasons = "; ".join(request.non_transactional)
        return (
            "The plan holds SQL that cannot run inside one transaction, so it is refused rather than "
            f"half-applied: {reasons}"
        ), None
    if not regenerate:
        return None, None
    saved_path = list(sys.path)
    try:
        preview = render_preview(config, list(request.from_heads), request.to_revision)
    except OpsError as exc:
        return f"The SQL preview cannot be re-generated now: {exc}", None
    finally:
        sys.path[:] = saved_path
    if request.plan_fingerprint:
        if preview.fingerprint != request.plan_fingerprint:
            where = first_difference(list(request.step_digests or []), preview.step_digests)
            return (
                f"The plan re-generated now differs from the one reviewed: {where} (plan fingerprint "
                f"{preview.fingerprint[:12]}… instead of {request.plan_fingerprint[:12]}…); create a new request."
            ), None
    elif preview.sha256 != request.sql_sha256:
        # A request made before plan fingerprints existed: only the preview text can be compared.
        return (
            f"The SQL preview re-generated now differs from the one reviewed (SHA-256 {preview.sha256[:12]}… "
            f"instead of {request.sql_sha256[:12]}…); create a new request."
        ), None
    return None, preview


# ------------------------------------------------------------------ gate 6
def check_code(request: RollbackRequest, code: str, actor: Actor) -> None:
    """Raise GateRefused unless `code` is right, unexpired and unused; a wrong code counts an attempt."""
    limit = settings.OPS_CODE_MAX_ATTEMPTS
    if request.code_used_at is not None:
        raise refuse(request, "code", f"The verification code of request #{request.pk} was already used.", actor)
    if not request.code_hash:
        raise refuse(request, "code", f"No verification code is active for request #{request.pk}.", actor)
    if request.code_attempts >= limit:
        raise _lock_out(request, actor)
    if request.code_expires_at is not None and timezone.now() >= request.code_expires_at:
        when = timezone.localtime(request.code_expires_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        raise refuse(
            request,
            "code",
            f"The verification code of request #{request.pk} expired at {when}; re-issue a code.",
            actor,
            {"reason": "expired"},
        )
    if code_matches(request, code):
        return
    RollbackRequest.objects.filter(pk=request.pk).update(code_attempts=F("code_attempts") + 1)
    request.refresh_from_db(fields=["code_attempts"])
    attempts = request.code_attempts
    append_event(
        action=AuditAction.CODE_REJECTED,
        outcome=AuditOutcome.REFUSED,
        actor=actor,
        message=f"Wrong verification code for request #{request.pk} (attempt {attempts} of {limit}).",
        detail={"attempts": attempts, "limit": limit},
        **request_context(request),
    )
    if attempts >= limit:
        raise _lock_out(request, actor)
    raise refuse(
        request,
        "code",
        f"Wrong verification code (attempt {attempts} of {limit}; the request locks after {limit}).",
        actor,
        {"attempts": attempts},
    )


def _lock_out(request: RollbackRequest, actor: Actor) -> GateRefused:
    changed = RollbackRequest.objects.filter(pk=request.pk, status=RollbackStatus.PENDING).update(
        status=RollbackStatus.LOCKED, code_hash=""
    )
    request.refresh_from_db(fields=["status", "code_hash"])
    message = (
        f"Wrong verification code; request #{request.pk} is now locked after {request.code_attempts} "
        "wrong attempts. Create a new request."
    )
    if changed:
        append_event(
            action=AuditAction.REQUEST_LOCKED,
            outcome=AuditOutcome.REFUSED,
            actor=actor,
            message=message,
            detail={"attempts": request.code_attempts},
            **request_context(request),
        )
    return refuse(request, "code", message, actor, {"attempts": request.code_attempts, "locked": True})


# ------------------------------------------------------------------ lists
def stored_summary(request: RollbackRequest) -> str:
    """One line for lists and the dashboard, from the console's own rows only.

    Never connects to the target nor reads the snapshot file: a list of N
    requests must not cost N connect timeouts when a target is down. The live
    checks (current heads, script files, the lock) are on the request page,
    and every gate is checked again at execution.
    """
    if request.status != RollbackStatus.PENDING:
        return request.get_status_display()
    stale = stale_message(request)
    if stale:
        return "blocked at 'request': expired (pending longer than OPS_REQUEST_TTL_SECONDS)"
    if not request.code_hash:
        return f"blocked at 'request': {request.last_refusal_message or 'no verification code issued'}"
    if request.code_used_at is not None:
        return "code accepted and spent on a queued downgrade; the request page links its operation"
    snap = request.snapshot
    if snap is None:
        return "blocked at 'snapshot': no snapshot attached"
    if snap.target_id != request.target_id or snap.status != SnapshotStatus.VERIFIED:
        return f"blocked at 'snapshot': snapshot #{snap.pk} is {snap.status} or of another target"
    if sorted(snap.heads) != sorted(request.from_heads):
        return f"blocked at 'snapshot': snapshot #{snap.pk} was taken at other heads than the plan's"
    if (timezone.now() - snap.started_at).total_seconds() > settings.OPS_SNAPSHOT_MAX_AGE_SECONDS:
        return f"blocked at 'snapshot': snapshot #{snap.pk} is older than the limit"
    rehearsal = _stored_rehearsal_block(request)
    if rehearsal:
        return f"blocked at 'rehearsal': {rehearsal}"
    if request.non_transactional:
        return "blocked at 'plan': the SQL cannot run inside one transaction"
    if request.code_expires_at is not None and timezone.now() >= request.code_expires_at:
        return "blocked at 'code': the code expired; re-issue one"
    return "ready so far; heads, files and lock are checked live on the request page"


def _stored_rehearsal_block(request: RollbackRequest) -> str | None:
    """Gate 3 from the console's rows: when a rehearsal is required, has this plan on this snapshot passed one?"""
    from opsapp.services.rehearsal.summary import latest_rehearsal, rehearsal_required
    from opsapp.targets import get_target

    try:
        is_postgresql = get_target(request.target.name).is_postgresql  # settings only, no connection
    except OpsError:
        is_postgresql = request.target.dialect in ("postgresql", "postgres")
    if not rehearsal_required(is_postgresql):
        return None
    rehearsal = latest_rehearsal(request)
    if rehearsal is None:
        return "not rehearsed yet"
    if rehearsal.status != "succeeded":
        return f"the latest rehearsal {rehearsal.status}"
    return None


# ------------------------------------------------------------------ helpers
def _fmt(heads: list[str]) -> str:
    return "[" + ", ".join(heads) + "]" if heads else "[] (empty)"
