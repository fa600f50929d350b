"""The target lock under production faults (issue 11, item 1): it is never lost while a downgrade runs.

The lock is a session advisory lock of the connection that runs the downgrade,
so a server that ends that session ends the downgrade with it. Tested with the
lock's backend terminated mid-downgrade, and with `idle_session_timeout` set on
the target database, using real executor processes.
"""

from __future__ import annotations

import json
import time

import pytest

pytest.register_assert_rewrite("rollback_fixtures")

from conftest import pg_query  # noqa: E402
from rollback_fixtures import (  # noqa: E402
    code_from_outbox,
    make_request,
    operator_actor,
    sleeping_backends,
    take_verified_snapshot,
    wait_for,
)

from opsapp.models import AuditEvent, RollbackRequest  # noqa: E402
from opsapp.services.actors import Actor  # noqa: E402
from opsapp.services.errors import GateRefused  # noqa: E402
from opsapp.services.locks import current_holder  # noqa: E402
from opsapp.services.rollback.requests import execute_request, reconcile  # noqa: E402

pytest_plugins = ["rollback_fixtures"]

TERMINAL = ("rollback_succeeded", "rollback_failed", "rollback_interrupted")


def terminal_events(request_id: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(request_id=request_id, action__in=TERMINAL).order_by("seq"))


def start_execution(env, settings, request, code: str):
    return env.manage(settings, "execute_rollback", str(request.pk), "--code", code, "--actor", "olga", "--json")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_idle_session_timeout_on_the_target_never_frees_the_lock_of_a_running_downgrade(
    roles_present, rollback_env, operator, approver, settings
):
    env = rollback_env
    settings.OPS_LOCK_WAIT_SECONDS = 0.5
    env.add_revision("r4", "r3", downgrade="op.execute('SELECT pg_sleep(5)')")
    snap = take_verified_snapshot(env, operator)
    first = make_request(env, operator, to="r3", snapshot=snap, reason="first")
    second = make_request(env, operator, to="r3", snapshot=snap, reason="second")
    second_code = code_from_outbox(second.pk)
    database = env.url.rsplit("/", 1)[1]
    # As on managed PostgreSQL: idle sessions are ended after one second.
    pg_query(env.url, f"ALTER DATABASE \"{database}\" SET idle_session_timeout = '1s'")

    proc = start_execution(env, settings, first, code_from_outbox(first.pk))
    try:
        sleeping = wait_for(lambda: sleeping_backends(env.url, "pg_sleep(5)"), timeout=60, what="the sleep", proc=proc)
        # Longer than the idle timeout: a lock on an idle side connection is gone by now.
        time.sleep(2)
        holder = current_holder(env.config)
        assert holder is not None and holder.request_id == first.pk
        # The lock is held by the backend doing the work.
        assert holder.pid == sleeping[0][0]

        # Nothing else may start on the target, and reconcile must not call it dead.
        with pytest.raises(GateRefused) as refused:
            execute_request(second.pk, code=second_code, actor=operator_actor(operator))
        assert refused.value.gate == "lock"
        assert f"request #{first.pk}" in str(refused.value)
        assert reconcile(actor=Actor.cron()) == []
        assert RollbackRequest.objects.get(pk=first.pk).status == "running"

        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (out, err)
    assert json.loads(out)["status"] == "succeeded"
    assert env.heads() == ["r3"]

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == "succeeded"
    assert second.status == "pending" and second.code_used_at is None  # its code is not spent
    assert [e.action for e in terminal_events(first.pk)] == ["rollback_succeeded"]
    assert terminal_events(second.pk) == []
    assert reconcile(actor=Actor.cron()) == []
    assert [e.action for e in terminal_events(first.pk)] == ["rollback_succeeded"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_terminating_the_lock_backend_mid_downgrade_rolls_the_downgrade_back_and_the_record_stays_consistent(
    roles_present, rollback_env, operator, approver, settings
):
    env = rollback_env
    env.add_revision("r4", "r3", downgrade="op.execute('SELECT pg_sleep(30)')")
    env.add_revision(
        "r5",
        "r4",
        upgrade="op.drop_column('notes', 'body')",
        downgrade="op.add_column('notes', sa.Column('body', sa.Text))",
    )
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r3", snapshot=snap)
    before = env.state()

    proc = start_execution(env, settings, request, code_from_outbox(request.pk))
    try:
        wait_for(lambda: sleeping_backends(env.url, "pg_sleep(30)"), timeout=60, what="the sleep", proc=proc)
        holder = current_holder(env.config)
        assert holder is not None and holder.request_id == request.pk
        # An administrator (or a failover) ends the lock's backend.
        assert pg_query(env.url, "SELECT pg_terminate_backend(%s)", (holder.pid,)) == [(True,)]
        # The downgrade died with it: no backend is still working on it.
        wait_for(lambda: not sleeping_backends(env.url, "pg_sleep(30)"), timeout=10, what="the work to stop")
        # Reconcile may run at any moment now, even before the executor records its result.
        reconcile(actor=Actor.cron())
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()

    # Rolled back completely: r5's re-added column and r4 never committed.
    assert env.state() == before
    request.refresh_from_db()
    assert request.status in ("failed", "interrupted"), (request.status, out, err)
    assert request.final_heads == ["r5"]
    events = terminal_events(request.pk)
    assert len(events) == 1, [(e.action, e.message) for e in events]
    assert "unchanged" in events[0].message
    # Later reconciles change nothing: the log never contradicts itself.
    assert reconcile(actor=Actor.cron()) == []
    assert len(terminal_events(request.pk)) == 1
    assert current_holder(env.config) is None
