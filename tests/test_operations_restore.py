"""A restore as a queued operation into a named restore destination (issue 13), with real worker processes.

The destination's URL (with a password that trust auth ignores) is only in
the worker's environment; the queue and the console's tables hold its name.
A test that must catch pg_restore mid-way holds a SHARE lock on the
destination's pg_class: pg_restore's first CREATE waits there for as long as
the test needs, deterministically.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import operations_support
import psycopg
import pytest
from conftest import pg_query
from rollback_fixtures import build_rollback_env, take_verified_snapshot, wait_for

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "s3cret-restore-pw"


@pytest.fixture
def small_env(roles_present, pg_database_factory, script_dir_factory, configure_target, snapshot_dir):
    url = pg_database_factory()
    return build_rollback_env("rbt", url, script_dir_factory(url), configure_target)


@pytest.fixture
def destination(pg_database_factory, settings) -> str:
    """Restore destination `scratch`: a new, empty database whose URL holds a password."""
    url = pg_database_factory().replace("postgres@", f"postgres:{PASSWORD}@")
    settings.OPS_RESTORE_DESTINATIONS = {"scratch": {"URL": url, "URL_FILE": ""}}
    return url


def restore_worker_env(settings, env, destination_url: str) -> dict[str, str]:
    worker_env = env.subprocess_env(settings)
    worker_env.update(
        {
            "OPS_HEARTBEAT_SECONDS": "0.2",
            "OPS_RESTORE_DESTINATIONS": "scratch",
            "OPS_RESTORE_DESTINATION_SCRATCH_URL": destination_url,
        }
    )
    return worker_env


def run_batch(worker_env: dict[str, str]) -> str:
    proc = operations_support.start_worker(worker_env, "--batch", split_output=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"{out}\n{err}"
    return out + err


def op_row(pk: int):
    from opsapp.models import Operation

    return Operation.objects.select_related("snapshot").get(pk=pk)


def actor_for(user):
    from opsapp.services.actors import Actor

    return Actor.from_user(user)


def tables_in(url: str) -> list[str]:
    return [r[0] for r in pg_query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]


def console_tables_text() -> str:
    """Every row of the queue table, the operations and the audit log, as one string."""
    from django.db import connection

    text = []
    with connection.cursor() as cur:
        for table in ("django_tasks_database_dbtaskresult", "opsapp_operation", "opsapp_auditevent"):
            cur.execute(f"SELECT * FROM {table}")
            text.append(repr(cur.fetchall()))
    return "\n".join(text)


@contextmanager
def pg_restore_held_at_its_first_create(url: str):
    """pg_restore into `url` waits at its first CREATE while this block runs (a SHARE lock on pg_class)."""
    conn = psycopg.connect(url.replace(f":{PASSWORD}", ""))
    try:
        conn.execute("LOCK TABLE pg_catalog.pg_class IN SHARE MODE")
        yield
    finally:
        conn.rollback()
        conn.close()


def waiting_on_a_lock(url: str) -> bool:
    name = url.rsplit("/", 1)[1]
    rows = pg_query(
        url.replace(f":{PASSWORD}", "").rsplit("/", 1)[0] + "/postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
        (name,),
    )
    return rows[0][0] > 0


def restore_sessions(url: str) -> int:
    name = url.rsplit("/", 1)[1]
    rows = pg_query(
        url.replace(f":{PASSWORD}", "").rsplit("/", 1)[0] + "/postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'ops-console'",
        (name,),
    )
    return rows[0][0]


def test_a_queued_restore_runs_in_a_worker_and_no_password_enters_the_queue_or_the_console(
    small_env, destination, operator, settings
):
    from opsapp.models import AuditEvent
    from opsapp.services.operations.queue import enqueue_restore

    snap = take_verified_snapshot(small_env, operator)
    op = enqueue_restore(snap.pk, "scratch", actor=actor_for(operator))
    assert op.kind == "restore" and op.params == {"destination": "scratch"} and op.snapshot_id == snap.pk
    assert PASSWORD not in console_tables_text()
    run_batch(restore_worker_env(settings, small_env, destination))
    done = op_row(op.pk)
    assert done.state == "succeeded", done.error
    assert done.result["heads"] == ["r3"] and done.result["destination"] == "scratch"
    assert done.result["row_counts"] == {"alembic_version": 1, "customers": 3, "notes": 2}
    assert done.progress_done == done.progress_total == snap.size
    assert tables_in(destination) == ["alembic_version", "customers", "notes"]
    assert AuditEvent.objects.filter(action="restore_queued", snapshot_id=snap.pk, actor=operator.username).exists()
    restored = AuditEvent.objects.get(action="snapshot_restored", snapshot_id=snap.pk)
    assert restored.outcome == "success" and restored.actor == operator.username
    assert "scratch" in restored.message and "***" in restored.message
    assert PASSWORD not in console_tables_text()


def test_a_running_restore_is_cancelled_its_pg_restore_stopped_and_the_destination_left_empty(
    small_env, destination, operator, settings
):
    from opsapp.models import AuditEvent
    from opsapp.services.operations.queue import cancel_operation, enqueue_restore

    snap = take_verified_snapshot(small_env, operator)
    op = enqueue_restore(snap.pk, "scratch", actor=actor_for(operator))
    worker = operations_support.start_worker(
        restore_worker_env(settings, small_env, destination), "--batch", split_output=True
    )
    try:
        with pg_restore_held_at_its_first_create(destination):
            wait_for(lambda: waiting_on_a_lock(destination), timeout=60, what="pg_restore to start", proc=worker)
            assert op_row(op.pk).state == "running"
            cancel_operation(op.pk, actor=actor_for(operator))
            out, err = worker.communicate(timeout=60)  # the worker ends its batch: pg_restore was killed
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    done = op_row(op.pk)
    assert done.state == "cancelled", (done.error, err)
    assert "pg_restore was stopped" in done.error
    wait_for(lambda: restore_sessions(destination) == 0, timeout=30, what="pg_restore's session to end")
    assert tables_in(destination) == []
    assert AuditEvent.objects.filter(action="operation_cancelled", message__contains="pg_restore").count() == 2


def test_a_worker_killed_mid_restore_leaves_an_interrupted_operation_and_an_empty_destination(
    small_env, destination, operator, settings
):
    from opsapp.models import AuditEvent
    from opsapp.services.operations.queue import enqueue_restore

    snap = take_verified_snapshot(small_env, operator)
    op = enqueue_restore(snap.pk, "scratch", actor=actor_for(operator))
    worker_env = restore_worker_env(settings, small_env, destination)
    worker = operations_support.start_worker(worker_env, split_output=True)
    try:
        with pg_restore_held_at_its_first_create(destination):
            wait_for(lambda: waiting_on_a_lock(destination), timeout=60, what="pg_restore to start", proc=worker)
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    wait_for(lambda: restore_sessions(destination) == 0, timeout=30, what="pg_restore's session to end")
    assert op_row(op.pk).state == "running"  # nobody has looked yet
    run_batch(worker_env)  # a worker's start reconciles
    dead = op_row(op.pk)
    assert dead.state == "interrupted", dead.error
    assert "destination 'scratch' is as before" in dead.error
    assert tables_in(destination) == []
    assert AuditEvent.objects.filter(action="operation_interrupted").exists()


def test_a_destination_that_is_a_target_under_another_host_name_is_refused_by_the_worker(small_env, operator, settings):
    from opsapp.models import AuditEvent
    from opsapp.services.operations.queue import enqueue_restore

    snap = take_verified_snapshot(small_env, operator)
    same_database = small_env.url.replace("127.0.0.1", "localhost")
    assert same_database != small_env.url
    settings.OPS_RESTORE_DESTINATIONS = {"scratch": {"URL": same_database, "URL_FILE": ""}}
    before = small_env.state()
    op = enqueue_restore(snap.pk, "scratch", actor=actor_for(operator))  # the URLs differ: only the server can tell
    run_batch(restore_worker_env(settings, small_env, same_database))
    done = op_row(op.pk)
    assert done.state == "failed"
    assert "it is the database of target 'rbt'" in done.error
    assert small_env.state() == before
    refused = AuditEvent.objects.get(action="snapshot_restored", snapshot_id=snap.pk)
    assert refused.outcome == "refused"
