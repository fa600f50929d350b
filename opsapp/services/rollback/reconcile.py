"""Requests left `running` by an executor that died: marked `interrupted`, decided by the target's lock."""

from __future__ import annotations

from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, RollbackRequest, RollbackStatus
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.catalog import sync as catalog
from opsapp.services.errors import OpsError
from opsapp.services.locks import LockBusy, LockHolder, target_lock
from opsapp.targets import get_target


def reconcile(*, actor: Actor) -> list[RollbackRequest]:
    """Mark `running` requests whose target lock is free as `interrupted`, with the heads found; audit each.

    Liveness comes from the lock alone, never from time: the executor holds
    the target's lock on the very connection that runs the downgrade, from
    before the request turns `running` until its result is recorded. So a
    free lock proves the executor's connection is gone, and with it any
    uncommitted downgrade. The lock is held (no wait) while a target is
    reconciled, so no new execution starts meanwhile. Targets that are
    unreachable or misconfigured are skipped. The executor's own result
    records are conditional on `running`, so the two never both close a
    request.
    """
    done: list[RollbackRequest] = []
    running = RollbackRequest.objects.filter(status=RollbackStatus.RUNNING).select_related("target")
    for request in running:
        try:
            config = get_target(request.target.name)
            holder = LockHolder(user=actor.username, operation="reconcile", since=timezone.now())
            with target_lock(config, holder=holder, wait_seconds=0):
                heads = catalog.read_current_heads(config)
                if _mark_interrupted(request, heads, actor):
                    request.refresh_from_db()
                    done.append(request)
        except (LockBusy, OpsError):
            continue
    return done


def _mark_interrupted(request: RollbackRequest, heads: list[str], actor: Actor) -> bool:
    planned = sorted((request.step_digests or [{}])[-1].get("heads_after") or []) if request.step_digests else None
    if sorted(heads) == sorted(request.from_heads):
        found = "the target is unchanged at its from-heads (the transaction was rolled back)"
    elif planned is not None and sorted(heads) == planned:
        found = f"the target is at the planned heads {heads}: the downgrade committed before its result was recorded"
    else:
        found = f"the target's heads are {heads or '(none)'}, not the from-heads {request.from_heads}"
    message = f"The process running request #{request.pk} stopped before recording a result; {found}."
    changed = RollbackRequest.objects.filter(pk=request.pk, status=RollbackStatus.RUNNING).update(
        status=RollbackStatus.INTERRUPTED, finished_at=timezone.now(), final_heads=heads, error=message
    )
    if changed:
        append_event(
            action=AuditAction.ROLLBACK_INTERRUPTED,
            outcome=AuditOutcome.FAILURE,
            actor=actor,
            message=message,
            **request_context(request),
            detail={"heads_found": heads, "unchanged": sorted(heads) == sorted(request.from_heads)},
        )
    return bool(changed)
