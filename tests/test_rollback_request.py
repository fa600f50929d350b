"""Requesting a downgrade: the plan, the SQL preview, destructive analysis, codes, snapshot attach."""

from __future__ import annotations

import hashlib

import pytest

pytest.register_assert_rewrite("rollback_fixtures")

from django.core import mail  # noqa: E402
from rollback_fixtures import audit_actions, code_from_outbox, make_request, operator_actor, take_verified_snapshot  # noqa: E402

from opsapp.models import AuditEvent, RollbackRequest, Snapshot, SnapshotStatus, Target  # noqa: E402
from opsapp.services.errors import GateRefused, OpsError, RevisionResolutionError  # noqa: E402
from opsapp.services.rollback.requests import attach_snapshot, cancel_request, execute_request, issue_code  # noqa: E402

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db


def test_it_plans_a_downgrade_with_its_sql_preview_and_destructive_row_counts(rollback_env, operator, approver):
    before = rollback_env.state()
    request = make_request(rollback_env, operator)

    assert request.status == "pending"
    assert request.from_heads == ["r3"] and request.to_revision == "r1"
    assert request.steps == ["r3", "r2"]
    assert "DROP TABLE notes" in request.sql_preview
    assert "ALTER TABLE customers DROP COLUMN email" in request.sql_preview
    assert request.sql_sha256 == hashlib.sha256(request.sql_preview.encode()).hexdigest()
    assert len(request.script_fingerprint) == 64 and len(request.plan_hash) == 64
    found = {
        (d["kind"], d["table"], d["column"]): (d["rows"], d["non_null"], d["revision"]) for d in request.destructive
    }
    assert found == {
        ("DROP TABLE", "notes", None): (2, None, "r3"),
        ("DROP COLUMN", "customers", "email"): (3, 3, "r2"),
    }
    assert request.non_transactional == []
    assert request.requested_by == operator and request.requested_by_username == "olga"
    assert audit_actions(request.pk) == ["rollback_requested", "code_issued"]
    assert rollback_env.state() == before  # planning reads only


def test_the_code_is_emailed_to_approvers_only_and_stored_only_as_a_hash(rollback_env, operator, approver, auditor):
    request = make_request(rollback_env, operator)

    assert [m.to for m in mail.outbox] == [[approver.email]]
    message = mail.outbox[0]
    assert f"request #{request.pk} " in message.subject and rollback_env.name in message.subject
    code = code_from_outbox(request.pk)
    assert len(code) >= 8 and code.isdigit()
    assert "DROP TABLE notes: 2 rows" in message.body and "Reverts:    r3, r2" in message.body
    assert request.code_recipients == ["anton"]
    assert code not in request.code_hash and len(request.code_hash) == 64
    for event in AuditEvent.objects.all():
        assert code not in f"{event.message} {event.detail}"
    row = RollbackRequest.objects.filter(pk=request.pk).values().get()
    assert not any(code in str(value) for value in row.values())


def test_reissuing_a_code_kills_the_old_one(ready_request, operator):
    old_code, request = ready_request.code, ready_request.request
    before = ready_request.env.state()

    assert issue_code(request, actor=operator_actor(operator)) == ["anton"]
    new_code = code_from_outbox(request.pk)
    assert len(mail.outbox) == 2  # the original email and the re-issued one
    assert new_code is not None

    with pytest.raises(GateRefused) as refused:
        execute_request(request.pk, code=old_code, actor=operator_actor(operator))
    assert refused.value.gate == "code" and "Wrong verification code" in str(refused.value)
    assert ready_request.env.state() == before
    assert audit_actions(request.pk)[-2:] == ["code_rejected", "rollback_refused"]


def assert_refused_request_audited(refusal: str, needle: str) -> None:
    """A refused request stores nothing and sends nothing, but the attempt is audited."""
    assert not RollbackRequest.objects.exists() and mail.outbox == []
    event = AuditEvent.objects.filter(action="rollback_requested").get()
    assert event.outcome == "refused" and event.request_id is None
    assert event.detail["refusal"] == refusal and needle in event.message


def test_it_refuses_an_unknown_revision_with_the_planners_message(rollback_env, operator, approver):
    before = rollback_env.state()
    with pytest.raises(RevisionResolutionError) as refused:
        make_request(rollback_env, operator, to="nope")
    assert "nope" in str(refused.value)
    assert_refused_request_audited("RevisionResolutionError", "nope")
    assert rollback_env.state() == before


def test_it_refuses_a_revision_that_is_not_below_the_heads(rollback_env, operator, approver):
    before = rollback_env.state()
    with pytest.raises(RevisionResolutionError) as refused:
        make_request(rollback_env, operator, to="r3")
    assert "Nothing to downgrade" in str(refused.value)
    assert_refused_request_audited("RevisionResolutionError", "Nothing to downgrade")
    assert rollback_env.state() == before


def test_it_refuses_a_request_without_a_reason(rollback_env, operator, approver):
    before = rollback_env.state()
    with pytest.raises(OpsError) as refused:
        make_request(rollback_env, operator, reason="   ")
    assert "reason is required" in str(refused.value)
    assert_refused_request_audited("OpsError", "reason is required")
    assert rollback_env.state() == before


def test_it_refuses_a_bad_snapshot_before_storing_a_request_or_sending_a_code(rollback_env, operator, approver):
    before = rollback_env.state()
    elsewhere = Target.objects.create(name="elsewhere")
    foreign = Snapshot.objects.create(target=elsewhere, status=SnapshotStatus.VERIFIED, heads=["r3"])
    failed = Snapshot.objects.create(target=Target.objects.get(name=rollback_env.name), status=SnapshotStatus.FAILED)
    for snapshot, message in [
        (Snapshot(pk=999999), "Snapshot #999999 does not exist."),
        (foreign, f"Snapshot #{foreign.pk} belongs to target 'elsewhere', not {rollback_env.name!r}."),
        (failed, f"Snapshot #{failed.pk} is failed; attach a verified snapshot."),
    ]:
        with pytest.raises(OpsError) as refused:
            make_request(rollback_env, operator, snapshot=snapshot)
        assert str(refused.value) == message
    assert not RollbackRequest.objects.exists() and mail.outbox == []
    assert not AuditEvent.objects.filter(action="code_issued").exists()
    # Each refused attempt is on the record (nothing was stored, no code went out).
    refusals = AuditEvent.objects.filter(action="rollback_requested").order_by("seq")
    assert [(e.outcome, e.request_id, e.detail["refusal"]) for e in refusals] == [("refused", None, "OpsError")] * 3
    assert "Snapshot #999999 does not exist." in refusals[0].message
    assert rollback_env.state() == before


def test_a_request_whose_only_possible_approver_is_its_requester_cannot_proceed(rollback_env, approver):
    before = rollback_env.state()
    request = make_request(rollback_env, approver)  # anton requests; anton is the only approver

    assert request.status == "pending" and request.code_recipients == [] and not request.code_hash
    assert request.last_refusal_gate == "request"
    assert (
        "cannot proceed" in request.last_refusal_message and "other than the requester" in request.last_refusal_message
    )
    assert mail.outbox == []
    refused_issue = AuditEvent.objects.get(request_id=request.pk, action="code_issued")
    assert refused_issue.outcome == "refused"

    with pytest.raises(OpsError, match="cannot proceed"):
        issue_code(request, actor=operator_actor(approver))
    with pytest.raises(GateRefused) as refused:
        execute_request(request.pk, code="12345678", actor=operator_actor(approver))
    assert refused.value.gate == "request" and "cannot proceed" in str(refused.value)
    assert rollback_env.state() == before
    assert audit_actions(request.pk)[-1] == "rollback_refused"


def test_with_the_two_person_rule_off_the_requester_may_approve(rollback_env, approver, settings):
    settings.OPS_TWO_PERSON_RULE = False
    request = make_request(rollback_env, approver)
    assert request.code_recipients == ["anton"] and len(mail.outbox) == 1


def test_a_superuser_is_not_an_implicit_approver(rollback_env, operator, admin_user):
    request = make_request(rollback_env, operator)
    assert request.code_recipients == [] and request.last_refusal_gate == "request"


def test_attaching_snapshots_checks_target_and_status(ready_request, operator):
    request = ready_request.request
    actor = operator_actor(operator)
    elsewhere = Target.objects.create(name="elsewhere")
    foreign = Snapshot.objects.create(target=elsewhere, status=SnapshotStatus.VERIFIED, heads=["r3"])
    with pytest.raises(OpsError, match="belongs to target 'elsewhere'"):
        attach_snapshot(request, foreign.pk, actor=actor)
    with pytest.raises(OpsError, match="does not exist"):
        attach_snapshot(request, 999999, actor=actor)

    second = take_verified_snapshot(ready_request.env, operator)
    attach_snapshot(request, second.pk, actor=actor)
    request.refresh_from_db()
    assert request.snapshot_id == second.pk
    event = AuditEvent.objects.filter(request_id=request.pk, action="snapshot_attached").order_by("seq").last()
    assert event.snapshot_id == second.pk


def test_cancelling_a_request_kills_its_code(ready_request, operator):
    request = cancel_request(ready_request.request, actor=operator_actor(operator))
    assert request.status == "cancelled" and request.code_hash == ""
    assert audit_actions(request.pk)[-1] == "request_cancelled"
    before = ready_request.env.state()
    with pytest.raises(GateRefused) as refused:
        execute_request(request.pk, code=ready_request.code, actor=operator_actor(operator))
    assert refused.value.gate == "request" and "cancelled, not pending" in str(refused.value)
    assert ready_request.env.state() == before


def test_the_analysis_lists_truncate_delete_and_alter_type_with_live_row_counts(rollback_env, operator, approver):
    env = rollback_env
    env.add_revision(
        "r4",
        "r3",
        upgrade="op.execute('SELECT 1')",
        downgrade=(
            "op.execute('DELETE FROM customers WHERE id > 2'); "
            "op.execute('TRUNCATE notes'); "
            "op.alter_column('customers', 'name', type_=sa.String(20))"
        ),
    )
    before = env.state()
    request = make_request(env, operator, to="r3")

    found = {(d["kind"], d["table"], d["column"]): (d["rows"], d["revision"]) for d in request.destructive}
    assert found == {
        ("DELETE", "customers", None): (1, "r4"),  # WHERE id > 2 matches 1 of the 3 rows
        ("TRUNCATE", "notes", None): (2, "r4"),
        ("ALTER TYPE", "customers", "name"): (3, "r4"),
    }
    assert "TRUNCATE notes: 2 rows" in mail.outbox[-1].body
    assert request.non_transactional == []
    assert env.state() == before  # counting rows never runs the preview


def test_vacuum_and_add_value_on_an_old_server_make_a_plan_non_transactional():
    from opsapp.services.rollback.plan import find_non_transactional, split_statements

    sql = "-- Running downgrade r9 -> r8\n\nVACUUM notes;\n\nALTER TYPE mood ADD VALUE 'meh';\n"
    statements = split_statements(sql)
    old = find_non_transactional(statements, dialect="postgresql", server_version=(11, 5))
    assert old == [
        "r9: cannot run inside a transaction: VACUUM notes",
        "r9: ALTER TYPE ... ADD VALUE cannot run in a transaction before PostgreSQL 12",
    ]
    new = find_non_transactional(statements, dialect="postgresql", server_version=(15, 2))
    assert new == ["r9: cannot run inside a transaction: VACUUM notes"]


def test_the_log_says_the_sql_preview_ran_nothing(rollback_env, operator, approver, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        make_request(rollback_env, operator, to="r1")
    running = [r.getMessage() for r in caplog.records if "Running downgrade" in r.getMessage()]
    assert running, "Alembic should have logged the steps it rendered"
    assert all(m.startswith("[offline SQL preview, nothing executed]") for m in running), running
