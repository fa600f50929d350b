"""alembic_version holding a revision together with its own ancestor: a named drift state, refused everywhere.

The target is real (PostgreSQL, Alembic, the 3-step rbt history r1 -> r2 -> r3
at head with data); the overlap is made the way it happens in the field, by
INSERTing the ancestor's row into alembic_version by hand.
"""

from __future__ import annotations

import pytest
from alembic import command
from django.core import mail
from django.core.management import CommandError, call_command
from django.urls import reverse

from opsapp.models import AuditAction, AuditEvent, AuditOutcome, RollbackRequest, TargetState
from opsapp.services.errors import RevisionResolutionError
from tests.conftest import create_pg_database, drop_pg_database, pg_query
from tests.rollback_fixtures import build_rollback_env

pytestmark = pytest.mark.django_db


@pytest.fixture
def overlap_env(script_dir_factory, configure_target, snapshot_dir, operator, approver):
    """Target rbt at r3 whose alembic_version also holds r1 (an ancestor of r3)."""
    url = create_pg_database("ops_inputs")
    try:
        env = build_rollback_env("rbt", url, script_dir_factory(url), configure_target)
        pg_query(url, "INSERT INTO alembic_version (version_num) VALUES ('r1')")
        yield env
    finally:
        drop_pg_database(url)


def refusals() -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(action=AuditAction.ROLLBACK_REQUESTED, outcome=AuditOutcome.REFUSED).order_by("seq")
    )


def test_a_sync_names_the_overlap_and_the_stamp_that_fixes_it_not_behind(overlap_env):
    target = overlap_env.sync()
    assert target.state == TargetState.OVERLAPPING_VERSIONS
    assert target.get_state_display() == "overlapping alembic_version rows"
    assert "r1 is an ancestor of r3" in target.state_detail
    assert "`alembic stamp --purge r3`" in target.state_detail
    assert "Behind" not in target.state_detail and "upgrade head`" not in target.state_detail
    assert target.current_heads == ["r1", "r3"]


def test_the_advised_stamp_really_fixes_it_and_the_advice_alembic_would_give_does_not(overlap_env):
    from opsapp.services.alembic_api import connect, make_config

    # What "behind (0 pending)" used to advise fails on this table, as the state explains.
    with pytest.raises(Exception, match="overlaps with other requested revisions r1"):
        overlap_env.upgrade("head")
    assert overlap_env.heads() == ["r1", "r3"]
    with connect(overlap_env.config) as conn:
        with conn.begin():
            command.stamp(make_config(overlap_env.config, connection=conn), "r3", purge=True)
    assert overlap_env.heads() == ["r3"]
    assert overlap_env.sync().state == TargetState.AT_HEAD


def test_check_drift_exits_1_with_the_overlap_and_the_stamp(overlap_env, capsys):
    with pytest.raises(CommandError):
        call_command("check_drift", "--target", "rbt")
    out = capsys.readouterr().out
    assert "PROBLEM rbt: overlapping alembic_version rows" in out
    assert "alembic stamp --purge r3" in out
    assert "alembic upgrade head`" not in out


def test_check_drift_json_names_the_problem_code(overlap_env, capsys):
    import json

    with pytest.raises(CommandError):
        call_command("check_drift", "--target", "rbt", "--json", "--require-head")
    data = json.loads(capsys.readouterr().out)
    data = data[0] if isinstance(data, list) else data
    assert [p["code"] for p in data["problems"]] == ["overlapping_versions"]


def test_the_planner_refuses_overlapping_heads_with_the_fix_not_an_assertion(overlap_env):
    from opsapp.services.catalog.planner import plan_downgrade

    overlap_env.sync()
    for to in ("r2", "-1", "base", "r1"):
        with pytest.raises(RevisionResolutionError) as info:
            plan_downgrade("rbt", to, ["r1", "r3"])
        assert "overlapping rows" in str(info.value)
        assert "`alembic stamp --purge r3`" in str(info.value)
        assert info.value.reason == "overlapping_versions"


def test_the_command_refuses_the_request_with_a_clear_error_audited_and_nothing_changed(overlap_env, capsys):
    before = overlap_env.state()
    with pytest.raises(CommandError) as info:
        call_command("request_rollback", "--target", "rbt", "--to", "r2", "--reason", "bad", "--actor", "olga")
    assert "overlapping rows" in str(info.value) and "alembic stamp --purge r3" in str(info.value)
    assert "Traceback" not in capsys.readouterr().err
    assert not RollbackRequest.objects.exists()
    assert mail.outbox == []
    [event] = refusals()
    assert event.actor == "olga" and event.target_name == "rbt"
    assert "alembic stamp --purge r3" in event.message
    assert event.detail["refusal"] == "RevisionResolutionError"
    assert overlap_env.state() == before


def test_the_admin_form_refuses_the_request_on_the_page_audited_and_nothing_changed(overlap_env, client, operator):
    before = overlap_env.state()
    client.raise_request_exception = True
    client.force_login(operator)
    response = client.post(
        reverse("admin:opsapp_rollbackrequest_add"), {"target": "rbt", "to": "r2", "reason": "checkout broken"}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="request-refusal"' in page
    assert "overlapping rows" in page and "alembic stamp --purge r3" in page
    assert not RollbackRequest.objects.exists()
    [event] = refusals()
    assert event.actor == operator.username
    assert overlap_env.state() == before


def test_the_target_page_shows_the_state_and_the_fix(overlap_env, client, operator):
    target = overlap_env.sync()
    client.raise_request_exception = True
    client.force_login(operator)
    page = client.get(reverse("admin:opsapp_target_change", args=[target.pk])).content.decode()
    assert "overlapping alembic_version rows" in page
    assert "alembic stamp --purge r3" in page
