"""Queueing a downgrade: the gate is checked where the code is typed, then only an id is queued.

Which step happens where (README, "The gate across the queue"):

- web (or `execute_rollback --enqueue`): gates 1-4, gate 5 (the target's
  lock, bounded wait), then gate 6, the code, last. A correct code is spent
  here (`code_used_at`), together with creating the Operation and its queue
  entry, in one transaction, and audited (`code_accepted`). The code itself
  goes nowhere: not in the queue, not in the Operation.
- worker (runners.run_downgrade): gates 1-5 again under the target's lock on
  the working connection, the SQL preview re-rendered and compared; then it
  confirms the request's code is still the spent one it was queued with, and
  the downgrade runs at once under the same lock. A gate that fails there is
  audited (`rollback_refused`), the Operation fails naming the gate, the
  request stays pending with its code spent: a new code is needed.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from opsapp.models import (
    ACTIVE_STATES,
    AuditAction,
    AuditOutcome,
    Operation,
    OperationKind,
    RollbackRequest,
    RollbackStatus,
)
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.locks import LockBusy, LockHolder, target_lock
from opsapp.services.operations.queue import create_operation
from opsapp.services.rollback.execute import check_gates_before_lock, load_request
from opsapp.services.rollback.gate import check_code, refuse
from opsapp.targets import get_target


def enqueue_downgrade(request_id: int, *, code: str, actor: Actor) -> Operation:
    """Check gates 1-6 (the code last), spend the code and queue the downgrade; return the Operation.

    Raises GateRefused (audited; nothing changed, the code unspent unless it
    was the gate that refused) or OpsError for an unknown request or target.
    """
    request = load_request(request_id)
    config = get_target(request.target.name)
    queued = Operation.objects.filter(request=request, state__in=ACTIVE_STATES).first()
    if queued is not None:
        raise refuse(request, "request", f"Request #{request.pk} is already queued as operation #{queued.pk}.", actor)
    check_gates_before_lock(request, config, actor, regenerate=False)
    holder = LockHolder(user=actor.username, request_id=request.pk, since=timezone.now(), operation="queue")
    try:
        with target_lock(config, holder=holder, wait_seconds=settings.OPS_LOCK_WAIT_SECONDS):
            request = load_request(request_id)
            check_gates_before_lock(request, config, actor, regenerate=False)
            check_code(request, code, actor)
            return _spend_and_queue(request, actor)
    except LockBusy as exc:
        holder_text = exc.holder.describe() if getattr(exc, "holder", None) else None
        raise refuse(request, "lock", str(exc), actor, {"holder": holder_text}) from exc


def _spend_and_queue(request: RollbackRequest, actor: Actor) -> Operation:
    with transaction.atomic():
        spent = RollbackRequest.objects.filter(
            pk=request.pk, status=RollbackStatus.PENDING, code_used_at__isnull=True, code_hash=request.code_hash
        ).update(code_used_at=timezone.now(), last_refusal_gate="", last_refusal_message="")
        if not spent:
            raise refuse(
                request, "request", f"Request #{request.pk} changed while it was being checked; try again.", actor
            )
        request.refresh_from_db()
        op = create_operation(OperationKind.DOWNGRADE, request.target.name, actor=actor, request=request)
        append_event(
            action=AuditAction.CODE_ACCEPTED,
            outcome=AuditOutcome.INFO,
            actor=actor,
            message=(
                f"Code accepted for request #{request.pk}; the downgrade is queued as operation #{op.pk} "
                "(the worker checks the gate again under the target's lock before it starts)."
            ),
            detail={"operation": op.pk},
            **request_context(request),
        )
    return op
