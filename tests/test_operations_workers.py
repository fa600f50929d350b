"""Long operations as durable jobs, run by real `manage.py db_worker` processes on PostgreSQL (issue 13).

Workers are real subprocesses sharing the test's console database; they are
killed with SIGKILL where the issue asks what a dead worker leaves behind.
A big scratch target (prefix ops_jobs_) makes a dump last several seconds.
"""

from __future__ import annotations

import signal
import subprocess
import time

import operations_support
import pytest
from conftest import create_pg_database, drop_pg_database
from operations_support import fill_big_table
from rollback_fixtures import (
    build_rollback_env,
    code_from_outbox,
    make_request,
    sleeping_backends,
    take_verified_snapshot,
    wait_for,
)

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db(transaction=True)

BIG_ROWS = 200_000


@pytest.fixture
def big_env(roles_present, script_dir_factory, configure_target, snapshot_dir, settings):
    """A target whose dump takes several seconds (random text does not compress)."""
    url = create_pg_database("ops_jobs")
    try:
        env = build_rollback_env("bigt", url, script_dir_factory(url), configure_target)
        fill_big_table(url, BIG_ROWS)
        yield env
    finally:
        drop_pg_database(url)


@pytest.fixture
def small_env(roles_present, pg_database_factory, script_dir_factory, configure_target, snapshot_dir):
    url = pg_database_factory()
    return build_rollback_env("rbt", url, script_dir_factory(url), configure_target)


def worker_env(settings, *envs) -> dict[str, str]:
    env = envs[0].subprocess_env(settings)
    env["OPS_TARGETS"] = ",".join(e.name for e in envs)
    for e in envs:
        env[f"OPS_TARGET_{e.name.upper()}_URL"] = e.url
        env[f"OPS_TARGET_{e.name.upper()}_ALEMBIC_INI"] = str(e.scripts.ini)
    env["OPS_HEARTBEAT_SECONDS"] = "0.2"
    return env


def start_worker(env: dict[str, str], *extra: str) -> subprocess.Popen:
    return operations_support.start_worker(env, *extra, split_output=True)


def run_batch(env: dict[str, str], timeout: float = 120) -> str:
    proc = start_worker(env, "--batch")
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{out}\n{err}"
    return out + err


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def op_row(pk: int):
    from opsapp.models import Operation

    return Operation.objects.select_related("snapshot", "request").get(pk=pk)


def actor_for(user):
    from opsapp.services.actors import Actor

    return Actor.from_user(user)


def lock_is_free(env) -> bool:
    from opsapp.services.locks import current_holder

    return current_holder(env.config) is None


# ------------------------------------------------------------------ snapshots
def test_a_queued_snapshot_is_taken_by_a_worker_and_ends_verified(small_env, operator, settings):
    from opsapp.models import OperationKind
    from opsapp.services.operations.queue import enqueue

    op = enqueue(OperationKind.SNAPSHOT, small_env.name, actor=actor_for(operator))
    assert op_row(op.pk).state == "queued"
    log = run_batch(worker_env(settings, small_env))
    done = op_row(op.pk)
    assert done.state == "succeeded", log
    assert done.snapshot.status == "verified"
    assert done.worker_pid and done.worker_host and done.started_at and done.finished_at
    assert done.result["snapshot"] == done.snapshot_id
    assert done.progress_done == done.snapshot.size == done.progress_total


def test_a_worker_killed_mid_snapshot_leaves_an_interrupted_operation_no_partial_file_and_a_free_lock(
    big_env, operator, settings, snapshot_dir
):
    from opsapp.models import AuditEvent, Operation, OperationKind
    from opsapp.services.operations.queue import enqueue

    op = enqueue(OperationKind.SNAPSHOT, big_env.name, actor=actor_for(operator))
    worker = start_worker(worker_env(settings, big_env))
    try:
        wait_for(
            lambda: (op_row(op.pk).progress_done or 0) > 0 and any(snapshot_dir.iterdir()),
            timeout=60,
            what="the dump to start writing",
            proc=worker,
        )
        assert not lock_is_free(big_env)  # the running snapshot holds the target's lock
        kill(worker)
    finally:
        if worker.poll() is None:
            kill(worker)
    assert op_row(op.pk).state == "running"  # nobody has looked yet
    # The next worker start reconciles; run it in batch mode with retries off to see the state alone.
    env = worker_env(settings, big_env)
    env["OPS_SNAPSHOT_RETRIES"] = "0"
    run_batch(env)
    dead = op_row(op.pk)
    assert dead.state == "interrupted", dead.error
    assert "stopped before recording a result" in dead.error
    assert dead.snapshot.status == "failed"
    assert list(snapshot_dir.iterdir()) == []  # no partial file
    assert lock_is_free(big_env)
    assert AuditEvent.objects.filter(action="operation_interrupted").exists()
    assert not Operation.objects.filter(retry_of=dead).exists()


def test_a_snapshot_whose_worker_died_is_retried_with_a_fresh_file(small_env, operator, settings, snapshot_dir):
    from opsapp.models import Operation, OperationKind, Snapshot
    from opsapp.services.operations.queue import enqueue

    op = enqueue(OperationKind.SNAPSHOT, small_env.name, actor=actor_for(operator))
    # What a worker killed mid-dump leaves: a claimed job, a running row, a partial file, no liveness lock.
    snap = Snapshot.objects.create(target=op.target, status="running", format="pg_custom", taken_by="olga")
    partial = snapshot_dir / f".{small_env.name}-20260101T000000Z-{snap.pk}.dump.partial"
    partial.write_bytes(b"PGDMP half")
    Operation.objects.filter(pk=op.pk).update(state="running", snapshot=snap, worker_pid=999999, worker_host="gone")
    run_batch(worker_env(settings, small_env))
    old = op_row(op.pk)
    assert old.state == "interrupted"
    assert old.snapshot.status == "failed"
    assert not partial.exists()
    retry = Operation.objects.get(retry_of=old)
    assert retry.attempt == 2
    assert retry.state == "succeeded", retry.error
    assert retry.snapshot.status == "verified" and retry.snapshot_id != snap.pk


def test_a_running_snapshot_can_be_cancelled_its_dump_stopped_and_file_removed(
    big_env, operator, settings, snapshot_dir
):
    from opsapp.models import OperationKind
    from opsapp.services.operations.queue import cancel_operation, enqueue

    op = enqueue(OperationKind.SNAPSHOT, big_env.name, actor=actor_for(operator))
    worker = start_worker(worker_env(settings, big_env), "--batch")
    try:
        wait_for(lambda: (op_row(op.pk).progress_done or 0) > 0, timeout=60, what="the dump to start", proc=worker)
        cancel_operation(op.pk, actor=actor_for(operator))
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            kill(worker)
    done = op_row(op.pk)
    assert done.state == "cancelled", (done.error, err)
    assert done.snapshot.status == "failed"
    assert list(snapshot_dir.iterdir()) == []
    assert lock_is_free(big_env)


def test_a_queued_operation_is_cancelled_and_never_runs(small_env, operator, settings):
    from opsapp.models import AuditEvent, OperationKind, Snapshot
    from opsapp.services.operations.queue import cancel_operation, enqueue

    op = enqueue(OperationKind.SNAPSHOT, small_env.name, actor=actor_for(operator))
    cancel_operation(op.pk, actor=actor_for(operator))
    run_batch(worker_env(settings, small_env))
    assert op_row(op.pk).state == "cancelled"
    assert not Snapshot.objects.exists()
    assert AuditEvent.objects.filter(action="operation_cancelled").count() == 1


# ------------------------------------------------------------------ workers
def test_two_workers_never_run_two_operations_on_one_target_at_once_but_run_two_targets_in_parallel(
    big_env, small_env, operator, settings
):
    """Deterministic: a held table lock keeps the first dump of `bigt` running for as long as the test needs."""
    import psycopg

    from opsapp.models import OperationKind
    from opsapp.services.operations.queue import enqueue

    actor = actor_for(operator)
    env = worker_env(settings, big_env, small_env)
    blocker = psycopg.connect(big_env.url)
    blocker.execute("LOCK TABLE filler IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here until the test lets go
    workers = []
    try:
        first = enqueue(OperationKind.SNAPSHOT, big_env.name, actor=actor)
        workers.append(start_worker(env))
        wait_for(lambda: op_row(first.pk).state == "running", what="the first bigt snapshot to run", timeout=120)
        # A second worker runs another target's operation while the first target's is still running ...
        other = enqueue(OperationKind.SNAPSHOT, small_env.name, actor=actor)
        workers.append(start_worker(env))
        wait_for(lambda: op_row(other.pk).state not in ("queued", "running"), what="the rbt snapshot", timeout=120)
        assert op_row(other.pk).state == "succeeded", op_row(other.pk).error
        assert op_row(first.pk).state == "running"
        # ... but a second operation on the same target is claimed and then waits for the target's lock:
        # its dump does not start while the first one holds it.
        second = enqueue(OperationKind.SNAPSHOT, big_env.name, actor=actor)
        wait_for(lambda: op_row(second.pk).worker_pid, what="a worker to claim the second bigt snapshot", timeout=120)
        assert op_row(second.pk).snapshot is None
        assert op_row(first.pk).state == "running"
    finally:
        blocker.close()  # the first dump proceeds
    try:
        for op in (first, second):
            wait_for(
                lambda op=op: op_row(op.pk).state not in ("queued", "running"), what=f"operation #{op.pk}", timeout=240
            )
    finally:
        for w in workers:
            kill(w)
    a, b = op_row(first.pk), op_row(second.pk)
    assert (a.state, b.state) == ("succeeded", "succeeded"), (a.error, b.error)
    assert a.snapshot.finished_at <= b.snapshot.started_at  # one after the other on one target


def liveness_lock_pid(operation_id: int) -> int | None:
    """The backend holding operation `operation_id`'s liveness lock, None when it is free."""
    from django.db import connection

    from opsapp.services.operations.liveness import _key

    key = _key(operation_id)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid = %s AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            [key >> 32, key & 0xFFFFFFFF],
        )
        row = cur.fetchone()
    return row[0] if row else None


def backend_exists(pid: int) -> bool:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cur.fetchone() is not None


def test_a_worker_takes_every_jobs_liveness_lock_on_one_connection_and_replaces_it_when_it_is_lost(
    small_env, operator, settings
):
    """A connection per job would cost the server a backend per job. Each job is held running (waiting for
    the target's lock, which the test holds) while the test reads who holds its liveness lock."""
    from django.db import connection
    from django.utils import timezone

    from opsapp.models import OperationKind
    from opsapp.services.locks import LockHolder, target_lock
    from opsapp.services.operations.queue import enqueue

    def run_one_held() -> tuple[int, int]:
        holder = LockHolder(user="test", operation="hold", since=timezone.now())
        with target_lock(small_env.config, holder=holder, wait_seconds=10):
            op = enqueue(OperationKind.SYNC, small_env.name, actor=actor_for(operator))
            # The worker takes the liveness lock, then marks the row running: wait for both.
            pid = wait_for(
                lambda: op_row(op.pk).state == "running" and liveness_lock_pid(op.pk),
                what=f"operation #{op.pk} to run",
                proc=proc,
                timeout=60,
            )
        wait_for(lambda: op_row(op.pk).state != "running", what=f"operation #{op.pk} to end", timeout=60)
        assert op_row(op.pk).state == "succeeded", op_row(op.pk).error
        assert liveness_lock_pid(op.pk) is None  # released when the job ended
        return op.pk, pid

    proc = start_worker(worker_env(settings, small_env))
    try:
        _, first = run_one_held()
        _, second = run_one_held()
        assert first == second
        # The server drops that idle connection between two jobs: the next job opens a new one and runs.
        with connection.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [first])
        wait_for(lambda: not backend_exists(first), what="the backend to end", timeout=30)
        _, third = run_one_held()
        assert third != first
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_queued_jobs_survive_a_worker_restart(small_env, operator, settings):
    from opsapp.models import OperationKind
    from opsapp.services.operations.queue import enqueue

    ops = [enqueue(OperationKind.SYNC, small_env.name, actor=actor_for(operator)) for _ in range(3)]
    env = worker_env(settings, small_env)
    proc = start_worker(env, "--max-tasks", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    states = sorted(op_row(op.pk).state for op in ops)
    assert states == ["queued", "queued", "succeeded"]
    # A worker stopped with SIGTERM between jobs leaves the queue as it was, too.
    idle = start_worker(env, "--queue-name", "nothing-here")
    time.sleep(1)
    idle.send_signal(signal.SIGTERM)
    idle.communicate(timeout=30)
    run_batch(env)
    assert [op_row(op.pk).state for op in ops] == ["succeeded"] * 3


# ------------------------------------------------------------------ downgrades
def queue_downgrade(env, operator, approver):
    from opsapp.services.operations.downgrade import enqueue_downgrade

    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, snapshot=snap)
    code = code_from_outbox(request.pk, approver.email)
    op = enqueue_downgrade(request.pk, code=code, actor=actor_for(approver))
    return request, code, op


def test_a_queued_downgrade_runs_in_a_worker_and_no_code_or_password_enters_the_queue_table(
    roles_present, pg_database_factory, script_dir_factory, configure_target, snapshot_dir, operator, approver, settings
):
    from django.db import connection

    from opsapp.models import RollbackRequest

    url = pg_database_factory()
    secret_url = url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it; the console must hide it
    env = build_rollback_env("rbt", secret_url, script_dir_factory(secret_url), configure_target)
    request, code, op = queue_downgrade(env, operator, approver)
    with connection.cursor() as cur:
        cur.execute("SELECT * FROM django_tasks_database_dbtaskresult")
        queue_text = repr(cur.fetchall())
    assert str(op.pk) in queue_text
    assert code not in queue_text and "s3cret-pw" not in queue_text
    run_batch(worker_env(settings, env))
    done = op_row(op.pk)
    assert done.state == "succeeded", done.error
    assert RollbackRequest.objects.get(pk=request.pk).status == "succeeded"
    assert env.heads() == ["r1"]
    assert done.progress_done == done.progress_total == 2
    with connection.cursor() as cur:
        cur.execute("SELECT * FROM django_tasks_database_dbtaskresult")
        queue_text = repr(cur.fetchall())
    assert code not in queue_text and "s3cret-pw" not in queue_text


def test_a_gate_that_fails_in_the_worker_after_the_code_was_accepted_leaves_a_clear_state_and_a_spent_code(
    small_env, operator, approver, settings
):
    from opsapp.models import AuditEvent, RollbackRequest
    from opsapp.services.errors import GateRefused
    from opsapp.services.operations.downgrade import enqueue_downgrade

    request, code, op = queue_downgrade(small_env, operator, approver)
    small_env.downgrade_outside("r2")  # the plan no longer holds when the worker looks
    before = small_env.state()
    run_batch(worker_env(settings, small_env))
    done = op_row(op.pk)
    assert done.state == "failed"
    assert "gate 'snapshot' failed when the worker checked again" in done.error
    assert "issue a new code" in done.error
    assert small_env.state() == before
    fresh = RollbackRequest.objects.get(pk=request.pk)
    assert fresh.status == "pending" and fresh.code_used_at is not None
    assert AuditEvent.objects.filter(request_id=request.pk, action="code_accepted").exists()
    assert AuditEvent.objects.filter(request_id=request.pk, action="rollback_refused").exists()
    with pytest.raises(GateRefused) as refused:  # the spent code is never taken again
        enqueue_downgrade(request.pk, code=code, actor=actor_for(approver))
    assert refused.value.gate in ("snapshot", "code")


def test_a_worker_killed_mid_downgrade_leaves_the_target_unchanged_and_the_request_interrupted(
    small_env, operator, approver, settings
):
    from opsapp.models import RollbackRequest

    small_env.add_revision("r4", "r3", downgrade="op.execute('SELECT pg_sleep(60)')")
    request, code, op = queue_downgrade(small_env, operator, approver)
    before = small_env.state()
    worker = start_worker(worker_env(settings, small_env))
    try:
        wait_for(
            lambda: sleeping_backends(small_env.url, "pg_sleep(60)"), timeout=60, what="the downgrade", proc=worker
        )
        wait_for(
            lambda: op_row(op.pk).progress_label.startswith("reverting r4 (step 1 of 3)"),
            timeout=10,
            what="the step being reverted on the operation",
        )
        kill(worker)
    finally:
        if worker.poll() is None:
            kill(worker)
    wait_for(lambda: lock_is_free(small_env), timeout=30, what="the server to drop the dead connection")
    run_batch(worker_env(settings, small_env))
    assert op_row(op.pk).state == "interrupted"
    fresh = RollbackRequest.objects.get(pk=request.pk)
    assert fresh.status == "interrupted"
    assert small_env.state() == before


# ------------------------------------------------------------------ syncs
def test_a_running_sync_is_cancelled_at_a_safe_point_before_it_writes_and_the_cancel_is_audited(
    small_env, operator, settings
):
    """Deterministic: the test holds the target's catalog row, so the worker's sync waits just before it writes."""
    import psycopg
    from django.db import connection

    from opsapp.models import AuditEvent, OperationKind, Target
    from opsapp.services.operations.queue import cancel_operation, enqueue

    small_env.downgrade_outside("r2")  # a sync would record this heads change
    before = Target.objects.values("current_heads", "last_synced_at", "state").get(name=small_env.name)
    op = enqueue(OperationKind.SYNC, small_env.name, actor=actor_for(operator))
    blocker = psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}")
    worker = start_worker(worker_env(settings, small_env), "--batch")
    try:
        blocker.execute("SELECT id FROM opsapp_target WHERE name = %s FOR UPDATE", (small_env.name,))

        def sync_waits_for_the_row() -> bool:
            with connection.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE %s",
                    ["%opsapp_target%FOR UPDATE%"],
                )
                return cur.fetchone()[0] > 0

        wait_for(sync_waits_for_the_row, timeout=60, what="the sync to reach the target's row", proc=worker)
        assert op_row(op.pk).state == "running"
        cancel_operation(op.pk, actor=actor_for(operator))
    finally:
        blocker.rollback()
        blocker.close()
    try:
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            kill(worker)
    done = op_row(op.pk)
    assert done.state == "cancelled", (done.error, err)
    assert Target.objects.values("current_heads", "last_synced_at", "state").get(name=small_env.name) == before
    assert not AuditEvent.objects.filter(action="heads_changed").exists()
    stopped = AuditEvent.objects.filter(action="operation_cancelled", message__contains="safe point before writing")
    assert stopped.get().actor == operator.username
    # The next sync, not cancelled, records what this one would have.
    again = enqueue(OperationKind.SYNC, small_env.name, actor=actor_for(operator))
    run_batch(worker_env(settings, small_env))
    assert op_row(again.pk).state == "succeeded"
    assert Target.objects.get(name=small_env.name).current_heads == ["r2"]


# ------------------------------------------------------------------ honest ETA
def test_a_snapshot_job_estimates_its_final_size_from_the_previous_dump_not_from_the_database_size(
    small_env, operator, settings
):
    """The compressed archive ends far below pg_database_size; the bar's total must be near the real end.

    Deterministic: a held table lock keeps pg_dump waiting while the test reads the total the job announced.
    """
    import psycopg

    from opsapp.models import OperationKind
    from opsapp.services.operations.queue import enqueue

    fill_big_table(small_env.url, 20_000)
    first = take_verified_snapshot(small_env, operator)
    assert first.database_size > 2 * first.size  # what the old total (the database's size) overestimated
    op = enqueue(OperationKind.SNAPSHOT, small_env.name, actor=actor_for(operator))
    blocker = psycopg.connect(small_env.url)
    blocker.execute("LOCK TABLE filler IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here until the test lets go
    worker = start_worker(worker_env(settings, small_env), "--batch")
    try:
        running = wait_for(
            lambda: (row := op_row(op.pk)).state == "running" and row.progress_label == "dumping" and row,
            timeout=60,
            what="the snapshot job to announce its total",
            proc=worker,
        )
    finally:
        blocker.close()
    try:
        worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            kill(worker)
    done = op_row(op.pk)
    assert done.state == "succeeded", done.error
    final = done.snapshot.size
    assert abs(running.progress_total - final) <= final * 0.1, (running.progress_total, final)
    assert f"estimated from snapshot #{first.pk}" in running.progress_estimate
    assert running.progress_since is not None
    assert done.result["estimated_size"] == running.progress_total
