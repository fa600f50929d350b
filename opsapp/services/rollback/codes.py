"""Verification codes: who may approve, issuing by email, and the constant-time check.

A code is `OPS_CODE_DIGITS` random digits from `secrets`. Only
HMAC-SHA256(SECRET_KEY, "<request id>:<plan hash>:<code>") is stored, so a
code works for exactly one request and one plan, and the database never
holds it. The clear code exists only in the emails; it is never logged,
audited or returned to a caller.

Approvers are active users who hold `opsapp.approve_rollbackrequest`
explicitly, through a group (the `approvers` role) or a user permission, and
who have an email address. Superusers are deliberately not implied: who
receives codes is a reviewable role assignment, not a side effect of
break-glass accounts (add a superuser to `approvers` to make them one). With
the two-person rule on (OPS_TWO_PERSON_RULE, default) the requester is never
an approver of their own request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.mail import send_mail
from django.db.models import Q
from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, RollbackRequest, RollbackStatus
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.errors import OpsError
from opsapp.services.rollback.expiry import expire_if_stale

APPROVE_PERMISSION = ("opsapp", "approve_rollbackrequest")


class NoApprover(OpsError):
    """Nobody may receive the code of this request; it cannot proceed."""


def generate_code() -> str:
    digits = max(8, int(settings.OPS_CODE_DIGITS))
    return f"{secrets.randbelow(10**digits):0{digits}d}"


def hash_code(request: RollbackRequest, code: str) -> str:
    message = f"{request.pk}:{request.plan_hash}:{code}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def code_matches(request: RollbackRequest, code: str) -> bool:
    """Constant-time comparison of `code` with the stored hash (False when none is stored)."""
    if not request.code_hash:
        return False
    candidate = "".join((code or "").split())
    return hmac.compare_digest(hash_code(request, candidate), request.code_hash)


def approvers_qs():
    """Active users holding the approve permission explicitly (group or user permission)."""
    app_label, codename = APPROVE_PERMISSION
    perm = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
    User = get_user_model()
    if perm is None:
        return User.objects.none()
    return (
        User.objects.filter(is_active=True)
        .filter(Q(groups__permissions=perm) | Q(user_permissions=perm))
        .distinct()
        .order_by("username")
    )


def allowed_approvers(request: RollbackRequest) -> list:
    """Users who may receive this request's code: approvers with an email, minus the requester (two-person rule)."""
    users = [u for u in approvers_qs() if u.email]
    if settings.OPS_TWO_PERSON_RULE:
        users = [
            u for u in users if u.pk != request.requested_by_id and u.get_username() != request.requested_by_username
        ]
    return users


def recipients_still_allowed(request: RollbackRequest) -> list[str]:
    """Which of the usernames the code went to may still approve it (for gate 1)."""
    allowed = {u.get_username() for u in allowed_approvers(request)}
    return [name for name in request.code_recipients or [] if name in allowed]


def _no_approver_message(request: RollbackRequest) -> str:
    rule = " other than the requester" if settings.OPS_TWO_PERSON_RULE else ""
    return (
        f"Request #{request.pk} cannot proceed: no active user{rule} holds the approve permission "
        "(group 'approvers') with an email address, so nobody can receive its verification code."
    )


def _affected(item: dict) -> str:
    """One line of the plan: what the statement affects, never a whole-table count for a filtered one."""
    what = item["table"] + (f".{item['column']}" if item.get("column") else "")
    rows, table_rows = item.get("rows"), item.get("table_rows")
    if item.get("where"):
        if rows is None:
            size = "the table was not found" if table_rows is None else f"table has {table_rows} rows"
            figure = f"not counted ({size})"
        else:
            figure = f"{rows} of {'?' if table_rows is None else table_rows} rows match"
    else:
        figure = f"{'?' if rows is None else rows} rows"
    extra = f", {item['non_null']} non-null values" if item.get("non_null") is not None else ""
    return f"{item['kind']} {what}: {figure}{extra}"


def _email_body(request: RollbackRequest, code: str) -> str:
    lines = [
        f"A downgrade of target {request.target.name!r} was requested by {request.requested_by_username}.",
        "",
        f"Request:    #{request.pk}",
        f"Reason:     {request.reason}",
        f"From heads: {', '.join(request.from_heads) or '(none)'}",
        f"To:         {request.to_revision} (given as {request.to_revision_input!r})",
        f"Reverts:    {', '.join(request.steps)}",
        f"Plan hash:  {request.plan_hash}",
    ]
    if request.destructive:
        lines.append("Destroys or changes (rows counted when the request was made):")
        for item in request.destructive:
            lines.append(f"  - {_affected(item)}")
            # The statement exactly as it will run, WHERE clause included.
            lines.extend(f"      {line}" for line in item["statement"].splitlines())
    lines.extend(_rehearsal_lines(request))
    if request.non_transactional:
        lines.append("Cannot run in one transaction (execution will be refused):")
        lines.extend(f"  - {reason}" for reason in request.non_transactional)
    expires = timezone.localtime(request.code_expires_at).strftime("%Y-%m-%d %H:%M:%S %Z")
    lines += [
        "",
        f"Code: {code}",
        "",
        f"The code works once, for this request and plan only, until {expires}.",
        "Give it to the operator only if you approve this downgrade.",
    ]
    return "\n".join(lines) + "\n"


def _rehearsal_lines(request: RollbackRequest) -> list[str]:
    """The latest rehearsal's result, measured on a copy of the snapshot, and where it disagrees with the analysis."""
    from opsapp.services.rehearsal.summary import latest_rehearsal, result_line, static_differences

    rehearsal = latest_rehearsal(request)
    if rehearsal is None:
        return ["Rehearsal:  not rehearsed yet"]
    lines = [f"Rehearsal:  {result_line(rehearsal)}"]
    lines += [f"  ! differs from the analysis above: {diff}" for diff in static_differences(request, rehearsal)]
    return lines


def _write_code_state(request: RollbackRequest, **fields) -> None:
    """Write code fields only while the request is still pending (never a full save).

    A full `save()` would write back a stale status, `code_used_at` or
    `code_attempts` read before a concurrent executor consumed the code or a
    wrong attempt was counted. OpsError when the request left `pending` meanwhile.
    """
    changed = RollbackRequest.objects.filter(pk=request.pk, status=RollbackStatus.PENDING).update(**fields)
    if not changed:
        request.refresh_from_db()
        raise OpsError(
            f"Request #{request.pk} is {request.status}; a code can only be issued for a pending request.",
            target=request.target.name,
        )
    for name, value in fields.items():
        setattr(request, name, value)


def issue_code(request: RollbackRequest, *, actor: Actor) -> list[str]:
    """Issue a fresh code for a pending request, email it to every allowed approver; return their usernames.

    The previous code (if any) dies first. Raises OpsError for a request that
    is not pending or has expired (OPS_REQUEST_TTL_SECONDS; it is then marked
    expired, audited), NoApprover (recorded on the request and audited) when
    nobody may receive the code, and OpsError when sending fails (the new
    code is then discarded too).
    """

    request.refresh_from_db()
    common = request_context(request)
    expired = expire_if_stale(request)
    if expired:
        append_event(
            action=AuditAction.CODE_ISSUED,
            outcome=AuditOutcome.REFUSED,
            actor=actor,
            message=expired,
            detail={"gate": "request", "reason": "expired"},
            **common,
        )
        raise OpsError(expired, target=request.target.name, reason="expired")
    if request.status != RollbackStatus.PENDING:
        raise OpsError(f"Request #{request.pk} is {request.status}; a code can only be issued for a pending request.")
    had_code = bool(request.code_hash)
    cleared = {
        "code_hash": "",
        "code_issued_at": None,
        "code_expires_at": None,
        "code_used_at": None,
        "code_recipients": [],
    }
    users = allowed_approvers(request)
    if not users:
        message = _no_approver_message(request)
        _write_code_state(request, **cleared, last_refusal_gate="request", last_refusal_message=message)
        append_event(
            action=AuditAction.CODE_ISSUED,
            outcome=AuditOutcome.REFUSED,
            actor=actor,
            message=message,
            detail={"gate": "request", "reason": "no_approver", "previous_code_revoked": had_code},
            **common,
        )
        raise NoApprover(message, target=request.target.name, reason="no_approver")

    code = generate_code()
    now = timezone.now()
    fields = {
        **cleared,
        "code_hash": hash_code(request, code),
        "code_issued_at": now,
        "code_expires_at": now + timedelta(seconds=settings.OPS_CODE_TTL_SECONDS),
        "code_recipients": [u.get_username() for u in users],
    }
    if request.last_refusal_gate == "request":
        fields.update(last_refusal_gate="", last_refusal_message="")
    _write_code_state(request, **fields)
    subject = f"[ops-console] Verification code for rollback request #{request.pk} of target {request.target.name}"
    body = _email_body(request, code)
    try:
        for user in users:
            send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [user.email], fail_silently=False)
    except Exception as exc:  # noqa: BLE001 - any mail failure voids the code
        RollbackRequest.objects.filter(pk=request.pk, code_hash=request.code_hash).update(
            code_hash="", code_recipients=[]
        )
        request.code_hash, request.code_recipients = "", []
        message = f"The verification code for request #{request.pk} could not be emailed: {exc}"
        append_event(
            action=AuditAction.CODE_ISSUED, outcome=AuditOutcome.FAILURE, actor=actor, message=message, **common
        )
        raise OpsError(message, target=request.target.name) from exc
    append_event(
        action=AuditAction.CODE_ISSUED,
        outcome=AuditOutcome.SUCCESS,
        actor=actor,
        message=f"Code {'re-' if had_code else ''}issued to {', '.join(request.code_recipients)}.",
        detail={
            "recipients": request.code_recipients,
            "expires_at": request.code_expires_at.isoformat(),
            "previous_code_revoked": had_code,
        },
        **common,
    )
    return list(request.code_recipients)
