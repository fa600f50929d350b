"""Every gate refusal: its message, an unchanged target (heads, schema, rows) and its audit entry."""

from __future__ import annotations

from datetime import timedelta

import pytest

pytest.register_assert_rewrite("rollback_fixtures")

from django.core import mail  # noqa: E402
from django.utils import timezone  # noqa: E402
from rollback_fixtures import (  # noqa: E402
    audit_actions,
    code_from_outbox,
    last_refusal,
    make_request,
    operator_actor,
    take_verified_snapshot,
)

from opsapp.models import AuditEvent, RollbackRequest, Snapshot, SnapshotStatus, Target  # noqa: E402
from opsapp.services.errors import GateRefused, OpsError  # noqa: E402
from opsapp.services.locks import LockHolder, target_lock  # noqa: E402
from opsapp.services.rollback.requests import execute_request, gate_status, issue_code  # noqa: E402
from opsapp.services.snapshots.lifecycle import snapshot_path  # noqa: E402

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db


def refused(env, request_id: int, code: str, user, gate: str, text: str) -> GateRefused:
    """Execute, expect a refusal at `gate` whose message holds `text`; check nothing changed and it was audited."""
    before = env.state()
    with pytest.raises(GateRefused) as caught:
        execute_request(request_id, code=code, actor=operator_actor(user))
    assert caught.value.gate == gate, str(caught.value)
    assert text in str(caught.value)
    assert env.state() == before
    event = last_refusal(request_id)
    assert event is not None and event.detail["gate"] == gate and text in event.message
    request = RollbackRequest.objects.get(pk=request_id)
    assert request.last_refusal_gate == gate and text in request.last_refusal_message
    return caught.value


# ------------------------------------------------------------------ gate 5: code
def test_it_refuses_a_wrong_code(ready_request, operator):
    r = ready_request
    wrong = "0" * 8 if r.code != "0" * 8 else "1" * 8
    refused(r.env, r.request.pk, wrong, operator, "code", "Wrong verification code (attempt 1 of 5")
    assert audit_actions(r.request.pk)[-2:] == ["code_rejected", "rollback_refused"]
    r.request.refresh_from_db()
    assert r.request.code_attempts == 1 and r.request.status == "pending" and r.request.code_used_at is None


def test_it_refuses_an_expired_code(ready_request, operator, settings):
    r = ready_request
    settings.OPS_CODE_TTL_SECONDS = 0
    issue_code(r.request, actor=operator_actor(operator))
    fresh = code_from_outbox(r.request.pk)
    refused(r.env, r.request.pk, fresh, operator, "code", "expired")
    r.request.refresh_from_db()
    assert r.request.code_attempts == 0 and r.request.status == "pending"


def test_it_refuses_a_reused_code(ready_request, operator):
    r = ready_request
    result = execute_request(r.request.pk, code=r.code, actor=operator_actor(operator))
    assert result.status == "succeeded" and r.env.heads() == ["r1"]
    refused(r.env, r.request.pk, r.code, operator, "request", "its code was already used")


def test_it_locks_the_request_after_the_attempt_limit(ready_request, operator, settings):
    r = ready_request
    settings.OPS_CODE_MAX_ATTEMPTS = 3
    wrong = "0" * 8 if r.code != "0" * 8 else "1" * 8
    refused(r.env, r.request.pk, wrong, operator, "code", "attempt 1 of 3")
    refused(r.env, r.request.pk, wrong, operator, "code", "attempt 2 of 3")
    refused(r.env, r.request.pk, wrong, operator, "code", "is now locked after 3 wrong attempts")
    r.request.refresh_from_db()
    assert r.request.status == "locked"
    assert "request_locked" in audit_actions(r.request.pk)
    # Even the right code no longer works.
    refused(r.env, r.request.pk, r.code, operator, "request", "locked out, not pending")


def test_it_refuses_a_code_issued_for_a_different_request(ready_request, operator, approver):
    r = ready_request
    other = make_request(r.env, operator, snapshot=r.snapshot, reason="second opinion")
    other_code = code_from_outbox(other.pk)
    refused(r.env, r.request.pk, other_code, operator, "code", "Wrong verification code")
    refused(r.env, other.pk, r.code, operator, "code", "Wrong verification code")


# ------------------------------------------------------------------ gate 2: snapshot
def test_it_refuses_without_a_snapshot(rollback_env, operator, approver):
    request = make_request(rollback_env, operator)
    refused(rollback_env, request.pk, code_from_outbox(request.pk), operator, "snapshot", "No snapshot is attached")


def test_it_refuses_an_unverified_snapshot(ready_request, operator):
    r = ready_request
    Snapshot.objects.filter(pk=r.snapshot.pk).update(status=SnapshotStatus.COMPLETE)
    refused(r.env, r.request.pk, r.code, operator, "snapshot", f"Snapshot #{r.snapshot.pk} is complete, not verified")


def test_it_refuses_a_snapshot_of_another_target(ready_request, operator):
    r = ready_request
    elsewhere = Target.objects.create(name="elsewhere")
    foreign = Snapshot.objects.create(target=elsewhere, status=SnapshotStatus.VERIFIED, heads=["r3"])
    # attach_snapshot refuses it; the gate must still catch a row changed behind its back.
    RollbackRequest.objects.filter(pk=r.request.pk).update(snapshot=foreign)
    refused(r.env, r.request.pk, r.code, operator, "snapshot", "belongs to target 'elsewhere', not 'rbt'")


def test_it_refuses_a_snapshot_taken_at_other_heads(rollback_env, operator, approver):
    rollback_env.downgrade_outside("r2")
    at_r2 = take_verified_snapshot(rollback_env, operator)
    rollback_env.upgrade()
    request = make_request(rollback_env, operator, snapshot=at_r2)
    code = code_from_outbox(request.pk)
    refused(
        rollback_env, request.pk, code, operator, "snapshot", "was taken at heads [r2], but target 'rbt' is now at [r3]"
    )


def test_it_refuses_a_snapshot_older_than_the_limit(ready_request, operator):
    r = ready_request
    Snapshot.objects.filter(pk=r.snapshot.pk).update(started_at=timezone.now() - timedelta(hours=2))
    refused(r.env, r.request.pk, r.code, operator, "snapshot", "older than the limit of 60 min")


def test_it_refuses_a_snapshot_whose_file_was_altered(ready_request, operator):
    r = ready_request
    with snapshot_path(r.snapshot).open("ab") as fh:
        fh.write(b"tampered")
    refused(r.env, r.request.pk, r.code, operator, "snapshot", "was altered")


# ------------------------------------------------------------------ gate 3: plan
def test_it_refuses_when_the_heads_moved_since_the_request(ready_request, operator):
    r = ready_request
    r.env.downgrade_outside("r2")  # someone ran plain Alembic meanwhile
    fresh = take_verified_snapshot(r.env, operator)
    RollbackRequest.objects.filter(pk=r.request.pk).update(snapshot=fresh)  # so gate 2 passes
    refused(
        r.env, r.request.pk, r.code, operator, "plan", "moved since the request: now [r2], the plan starts from [r3]"
    )


def test_it_refuses_when_the_script_directory_changed_since_the_preview(ready_request, operator):
    r = ready_request
    r.env.scripts.add("r4", "r3", message="someone added this", upgrade="op.execute('SELECT 1')")
    refused(r.env, r.request.pk, r.code, operator, "plan", "script directory of target 'rbt' changed since the preview")


def test_it_refuses_non_transactional_sql_in_the_plan(rollback_env, operator, approver):
    rollback_env.add_revision(
        "r4",
        "r3",
        upgrade="op.execute('SELECT 1')",
        downgrade=(
            "with op.get_context().autocommit_block(): "
            "op.create_index('ix_notes_body', 'notes', ['body'], postgresql_concurrently=True)"
        ),
    )
    snap = take_verified_snapshot(rollback_env, operator)
    request = make_request(rollback_env, operator, to="r3", snapshot=snap)
    assert "CREATE INDEX CONCURRENTLY" in request.sql_preview
    reasons = " ".join(request.non_transactional)
    assert "autocommit_block" in reasons and "CONCURRENTLY" in reasons
    code = code_from_outbox(request.pk)
    refused(rollback_env, request.pk, code, operator, "plan", "cannot run inside one transaction")
    assert RollbackRequest.objects.get(pk=request.pk).status == "pending"


# ------------------------------------------------------------------ gate 4: lock
def test_it_refuses_while_another_operation_holds_the_lock(ready_request, operator, settings):
    r = ready_request
    settings.OPS_LOCK_WAIT_SECONDS = 0.3
    other = LockHolder(user="mallory", request_id=999, since=timezone.now())
    with target_lock(r.env.config, holder=other, wait_seconds=0):
        error = refused(r.env, r.request.pk, r.code, operator, "lock", "is locked by mallory (request #999")
    assert "gave up after waiting 0.3 s" in str(error)
    r.request.refresh_from_db()
    assert r.request.status == "pending" and r.request.code_used_at is None  # the code was not spent


def test_earlier_gates_are_reported_before_a_busy_lock(rollback_env, operator, approver, settings):
    settings.OPS_LOCK_WAIT_SECONDS = 0.3
    request = make_request(rollback_env, operator)  # no snapshot
    with target_lock(rollback_env.config, holder=LockHolder(user="mallory"), wait_seconds=0):
        refused(rollback_env, request.pk, code_from_outbox(request.pk), operator, "snapshot", "No snapshot")


# ------------------------------------------------------------------ the preview
def test_gate_status_previews_every_gate_without_changing_anything(ready_request, operator):
    r = ready_request
    events = AuditEvent.objects.count()
    checks = gate_status(r.request)
    assert [c.gate for c in checks] == ["request", "snapshot", "rehearsal", "plan", "lock", "code"]
    assert [c.ok for c in checks] == [True, True, True, True, True, None]
    Snapshot.objects.filter(pk=r.snapshot.pk).update(status=SnapshotStatus.COMPLETE)
    r.request.refresh_from_db()
    checks = gate_status(r.request)
    assert checks[1].ok is False and "not verified" in checks[1].message
    assert AuditEvent.objects.count() == events and len(mail.outbox) == 1


# ------------------------------------------------------------------ gate 1: expiry
def test_it_refuses_and_expires_a_request_pending_longer_than_the_request_ttl(ready_request, operator, settings):
    r = ready_request
    settings.OPS_REQUEST_TTL_SECONDS = 3600
    RollbackRequest.objects.filter(pk=r.request.pk).update(created_at=timezone.now() - timedelta(hours=2))
    refused(r.env, r.request.pk, r.code, operator, "request", "expired: it has been pending for 2 h 0 min")
    r.request.refresh_from_db()
    assert r.request.status == "expired" and r.request.code_hash == "" and r.request.code_used_at is None
    assert last_refusal(r.request.pk).detail == {"gate": "request", "reason": "expired"}
    # Once expired it stays refused, with the right code too.
    refused(r.env, r.request.pk, r.code, operator, "request", "is expired, not pending; create a new request")


def test_a_request_younger_than_the_request_ttl_is_not_expired(ready_request, operator, settings):
    r = ready_request
    settings.OPS_REQUEST_TTL_SECONDS = 3 * 3600
    RollbackRequest.objects.filter(pk=r.request.pk).update(created_at=timezone.now() - timedelta(hours=2))
    result = execute_request(r.request.pk, code=r.code, actor=operator_actor(operator))
    assert result.status == "succeeded"


def test_no_code_is_reissued_for_an_expired_request(ready_request, operator):
    r = ready_request
    RollbackRequest.objects.filter(pk=r.request.pk).update(created_at=timezone.now() - timedelta(days=2))
    mails = len(mail.outbox)
    with pytest.raises(OpsError, match="expired: it has been pending for 48 h"):
        issue_code(r.request, actor=operator_actor(operator))
    assert len(mail.outbox) == mails
    r.request.refresh_from_db()
    assert r.request.status == "expired" and r.request.code_hash == ""
    event = AuditEvent.objects.filter(request_id=r.request.pk, action="code_issued").order_by("-seq").first()
    assert event.outcome == "refused" and event.detail["reason"] == "expired"


def test_the_gate_preview_reports_an_expired_request_without_marking_it(ready_request):
    r = ready_request
    RollbackRequest.objects.filter(pk=r.request.pk).update(created_at=timezone.now() - timedelta(days=2))
    r.request.refresh_from_db()
    events = AuditEvent.objects.count()
    checks = gate_status(r.request)
    assert checks[0].ok is False and "expired" in checks[0].message
    r.request.refresh_from_db()
    assert r.request.status == "pending" and AuditEvent.objects.count() == events
