"""Rollback requests: plan, code, snapshot, execute, cancel, reconcile.

The public face of the guarded downgrade (docs/design.md, "The downgrade gate"
and "Execution"). The work lives in submodules:

- `plan`              offline SQL preview, destructive analysis, plan hash
- `codes`             verification codes and the approver emails
- `gate`              the six gates and the refusal record
- `execute`           the lock, the atomic downgrade, reconcile, gate preview

Shapes stored on a request (for pages and commands):
- `destructive`: list of {"revision", "kind" (DROP TABLE | DROP COLUMN |
  TRUNCATE | DELETE | UPDATE | ALTER TYPE | REBUILD TABLE), "schema", "table",
  "column", "statement" (exact text in the preview, without the `;`),
  "summary", "where" (a DELETE/UPDATE's WHERE clause, "" without one),
  "rows" (rows affected, counted at request time: the WHERE's matches, the
  whole table otherwise; None when not counted), "table_rows" (the table's
  size then), "non_null" (for DROP COLUMN), "note"}
- `non_transactional`: list of human-readable reasons (empty = executable)
"""

from __future__ import annotations

import sys

from django.db import transaction

from opsapp.models import AuditAction, AuditOutcome, RollbackRequest, RollbackStatus, Snapshot, SnapshotStatus
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event, request_context
from opsapp.services.catalog import planner
from opsapp.services.catalog import sync as catalog
from opsapp.services.errors import OpsError
from opsapp.services.rollback.codes import NoApprover, issue_code
from opsapp.services.rollback.execute import ExecutionResult, execute_request
from opsapp.services.rollback.gate import GATES, GateCheck
from opsapp.services.rollback.plan import analyze, compute_plan_hash, render_preview
from opsapp.services.rollback.preview import gate_status
from opsapp.services.rollback.reconcile import reconcile
from opsapp.targets import get_target

__all__ = [
    "GATES",
    "ExecutionResult",
    "GateCheck",
    "NoApprover",
    "attach_snapshot",
    "cancel_request",
    "create_request",
    "execute_request",
    "gate_status",
    "issue_code",
    "reconcile",
]


def create_request(
    *, target_name: str, to: str, reason: str, actor: Actor, snapshot_id: int | None = None
) -> RollbackRequest:
    """Plan a downgrade of `target_name` to `to`, store it, audit it and email a code to the approvers.

    Raises OpsError subclasses: TargetNotConfigured / TargetMisconfigured,
    TargetUnreachable, RevisionResolutionError (the planner's message),
    ScriptDirectoryError, OpsError for an empty reason or a bad snapshot.
    When nobody may approve, the request is still created and returned with
    `last_refusal_gate == "request"` and the reason in `last_refusal_message`
    (it cannot proceed until an approver exists and a code is re-issued).
    """
    reason = (reason or "").strip()
    try:
        target, plan, preview, fingerprint, analysis = _plan_request(target_name, to, reason, actor, snapshot_id)
    except OpsError as exc:
        # A refused request stores nothing, but the attempt is on the record.
        append_event(
            action=AuditAction.ROLLBACK_REQUESTED,
            outcome=AuditOutcome.REFUSED,
            actor=actor,
            message=f"Downgrade request for {target_name!r} to {(to or '').strip()!r} refused: {exc}",
            target=target_name[:100],
            to_revision=(to or "").strip()[:500],
            detail={"refusal": type(exc).__name__, "snapshot_id": snapshot_id},
        )
        raise
    plan_hash = compute_plan_hash(
        target=target_name,
        from_heads=plan.from_heads,
        to_revision=plan.to_revision,
        steps=preview.steps,
        sql_sha256=preview.sha256,
        fingerprint=fingerprint,
        plan_fingerprint=preview.fingerprint,
    )
    user = actor.user if getattr(actor.user, "pk", None) else None
    with transaction.atomic():
        request = RollbackRequest.objects.create(
            target=target,
            status=RollbackStatus.PENDING,
            requested_by=user,
            requested_by_username=actor.username[:150],
            reason=reason,
            to_revision_input=(to or "").strip()[:255],
            to_revision=plan.to_revision,
            from_heads=plan.from_heads,
            steps=preview.steps,
            sql_preview=preview.sql,
            sql_sha256=preview.sha256,
            plan_fingerprint=preview.fingerprint,
            step_digests=preview.step_digests,
            destructive=analysis.destructive,
            non_transactional=analysis.non_transactional,
            script_fingerprint=fingerprint,
            plan_hash=plan_hash,
        )
        append_event(
            action=AuditAction.ROLLBACK_REQUESTED,
            outcome=AuditOutcome.SUCCESS,
            actor=actor,
            message=f"Downgrade of {target_name!r} to {plan.to_revision} requested: {reason}",
            target=target_name,
            request_id=request.pk,
            from_revision=plan.from_heads,
            to_revision=plan.to_revision,
            detail={
                "to_input": request.to_revision_input,
                "steps": preview.steps,
                "sql_sha256": preview.sha256,
                "plan_fingerprint": preview.fingerprint,
                "plan_hash": plan_hash,
                "script_fingerprint": fingerprint,
                "destructive": [
                    {
                        k: item.get(k)
                        for k in ("revision", "kind", "table", "column", "where", "rows", "table_rows", "non_null")
                    }
                    for item in analysis.destructive
                ],
                "non_transactional": analysis.non_transactional,
            },
        )
    if snapshot_id is not None:
        attach_snapshot(request, snapshot_id, actor=actor)
    try:
        issue_code(request, actor=actor)
    except NoApprover:
        pass  # recorded on the request and audited by issue_code
    request.refresh_from_db()
    return request


def _plan_request(target_name: str, to: str, reason: str, actor: Actor, snapshot_id: int | None) -> tuple:
    """Everything a request needs before it is stored; raises OpsError (nothing stored) on refusal."""
    if not reason:
        raise OpsError("A reason is required for a downgrade request.", target=target_name)
    config = get_target(target_name)
    if snapshot_id is not None:
        # Refuse a bad --snapshot before anything is stored: not a request left behind without a code.
        _check_attachable(snapshot_id, target_name)
    target = catalog.sync_target(target_name, actor=actor)
    heads = catalog.read_current_heads(config)
    plan = planner.plan_downgrade(target_name, to, heads)
    saved_path = list(sys.path)
    try:
        preview = render_preview(config, plan.from_heads, plan.to_revision)
        fingerprint = catalog.script_fingerprint(config)
    finally:
        sys.path[:] = saved_path
    if set(preview.steps) != set(plan.steps):
        raise OpsError(
            f"The plan and Alembic disagree on what a downgrade to {plan.to_revision} reverts "
            f"(planned {plan.steps}, Alembic renders {preview.steps}); sync the catalog and try again.",
            target=target_name,
            revision=plan.to_revision,
        )
    analysis = analyze(config, preview)
    return target, plan, preview, fingerprint, analysis


def _check_attachable(snapshot_id: int, target_name: str) -> Snapshot:
    """The snapshot, if it exists, belongs to `target_name` and did not fail; OpsError otherwise."""
    snapshot = Snapshot.objects.select_related("target").filter(pk=snapshot_id).first()
    if snapshot is None:
        raise OpsError(f"Snapshot #{snapshot_id} does not exist.", target=target_name)
    if snapshot.target.name != target_name:
        raise OpsError(
            f"Snapshot #{snapshot_id} belongs to target {snapshot.target.name!r}, not {target_name!r}.",
            target=target_name,
        )
    if snapshot.status in (SnapshotStatus.FAILED, SnapshotStatus.PRUNED, SnapshotStatus.RUNNING):
        raise OpsError(f"Snapshot #{snapshot_id} is {snapshot.status}; attach a verified snapshot.", target=target_name)
    return snapshot


def attach_snapshot(request: RollbackRequest, snapshot_id: int, *, actor: Actor) -> RollbackRequest:
    """Attach snapshot `snapshot_id` to a pending request; audited.

    Refuses (OpsError) a missing snapshot, one of another target, and one
    that failed or was pruned. Whether it is verified, at the right heads
    and young enough is checked by the gate at execution.
    """
    request.refresh_from_db()
    if request.status != RollbackStatus.PENDING:
        raise OpsError(f"Request #{request.pk} is {request.status}; snapshots attach to pending requests only.")
    snapshot = _check_attachable(snapshot_id, request.target.name)
    previous = request.snapshot_id
    request.snapshot = snapshot
    request.save(update_fields=["snapshot"])
    append_event(
        action=AuditAction.SNAPSHOT_ATTACHED,
        outcome=AuditOutcome.SUCCESS,
        actor=actor,
        message=f"Snapshot #{snapshot_id} attached to request #{request.pk}.",
        **request_context(request),
        detail={"previous_snapshot_id": previous, "snapshot_heads": snapshot.heads, "status": snapshot.status},
    )
    return request


def cancel_request(request: RollbackRequest, *, actor: Actor) -> RollbackRequest:
    """Cancel a pending (or locked-out) request; its code dies. Audited. OpsError otherwise."""
    changed = RollbackRequest.objects.filter(
        pk=request.pk, status__in=(RollbackStatus.PENDING, RollbackStatus.LOCKED)
    ).update(status=RollbackStatus.CANCELLED, code_hash="")
    request.refresh_from_db()
    if not changed:
        raise OpsError(f"Request #{request.pk} is {request.status}; only pending requests can be cancelled.")
    append_event(
        action=AuditAction.REQUEST_CANCELLED,
        outcome=AuditOutcome.SUCCESS,
        actor=actor,
        message=f"Request #{request.pk} cancelled.",
        **request_context(request),
    )
    return request
