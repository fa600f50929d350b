"""Executing downgrades: success and restore, atomic failure, retries, SIGKILL, two processes, the commands."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess

import pytest

pytest.register_assert_rewrite("rollback_fixtures")

from conftest import pg_query  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import CommandError  # noqa: E402
from django.urls import reverse  # noqa: E402
from operations_support import run_queued_jobs  # noqa: E402
from rollback_fixtures import (  # noqa: E402
    R1_UP,
    R2_UP,
    R3_UP,
    RollbackEnv,
    audit_actions,
    build_rollback_env,
    code_from_outbox,
    make_request,
    operator_actor,
    sleeping_backends,
    take_verified_snapshot,
    wait_for,
)

from opsapp.models import AuditEvent, RollbackRequest, Target  # noqa: E402
from opsapp.services.actors import Actor  # noqa: E402
from opsapp.services.errors import GateRefused, RollbackFailed  # noqa: E402
from opsapp.services.locks import LockHolder, current_holder, sqlite_lock_path, target_lock  # noqa: E402
from opsapp.services.rollback.requests import execute_request, reconcile  # noqa: E402
from opsapp.services.snapshots.restore import restore_snapshot  # noqa: E402

pytest_plugins = ["rollback_fixtures"]

TIER_UP = "op.add_column('customers', sa.Column('tier', sa.String(10)))"
TIER_DOWN = "op.drop_column('customers', 'tier')"


# ------------------------------------------------------------------ in process
@pytest.mark.django_db
def test_a_successful_downgrade_reverts_the_planned_revisions_and_its_snapshot_restores_the_data(
    ready_request, operator, pg_database_factory
):
    r = ready_request
    result = execute_request(r.request.pk, code=r.code, actor=operator_actor(operator))

    assert (result.status, result.gate, result.heads) == ("succeeded", None, ["r1"])
    assert r.env.heads() == ["r1"]
    assert r.env.schema() == {"alembic_version": ["version_num"], "customers": ["id", "name"]}
    assert r.env.counts() == {"customers": 3}
    request = RollbackRequest.objects.get(pk=r.request.pk)
    assert request.status == "succeeded" and request.reverted == ["r3", "r2"] and request.final_heads == ["r1"]
    assert request.duration_ms is not None and request.code_used_at is not None and request.attempts == 1
    assert request.executed_by_username == "olga"
    assert audit_actions(request.pk)[-2:] == ["rollback_started", "rollback_succeeded"]
    assert Target.objects.get(name=r.env.name).current_heads == ["r1"]  # catalog re-synced

    # The dropped data lives on in the snapshot: restore it into a new database.
    into = pg_database_factory()
    restored = restore_snapshot(r.snapshot.pk, into, actor=operator_actor(operator))
    assert restored["heads"] == ["r3"]
    assert pg_query(into, "SELECT count(*) FROM notes")[0][0] == 2
    assert pg_query(into, "SELECT email FROM customers ORDER BY id")[0][0] == "ada@example.test"


@pytest.mark.django_db
def test_a_downgrade_whose_second_of_three_steps_fails_leaves_the_target_exactly_at_its_from_heads(
    rollback_env, operator, approver
):
    env = rollback_env
    env.add_revision("r4", "r3", downgrade="op.execute('ALTER TABLE no_such_table DROP COLUMN nothing')")
    env.add_revision("r5", "r4", upgrade=TIER_UP, downgrade=TIER_DOWN)
    pg_query(env.url, "UPDATE customers SET tier = 'gold'")
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r2", snapshot=snap)
    assert request.steps == ["r5", "r4", "r3"]
    before = env.state()

    with pytest.raises(RollbackFailed) as failed:
        execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))

    assert "no_such_table" in str(failed.value) and "the target is unchanged" in str(failed.value)
    assert failed.value.sqlstate == "42P01"
    assert env.state() == before
    assert pg_query(env.url, "SELECT count(*) FROM customers WHERE tier = 'gold'")[0][0] == 3
    request.refresh_from_db()
    assert request.status == "failed" and request.sqlstate == "42P01" and "no_such_table" in request.error
    assert request.final_heads == ["r5"]
    assert audit_actions(request.pk)[-2:] == ["rollback_started", "rollback_failed"]


@pytest.mark.django_db
def test_a_serialization_failure_is_retried_and_each_retry_is_audited(rollback_env, operator, approver):
    env = rollback_env
    pg_query(env.url, "CREATE SEQUENCE retry_probe")  # nextval survives a rolled-back attempt
    env.add_revision(
        "r4",
        "r3",
        downgrade=(
            "op.execute(\"DO $$ BEGIN IF nextval('retry_probe') = 1 THEN "
            "RAISE EXCEPTION 'simulated conflict' USING ERRCODE = 'serialization_failure'; END IF; END $$\")"
        ),
    )
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r3", snapshot=snap)

    result = execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))

    assert result.status == "succeeded" and env.heads() == ["r3"]
    request.refresh_from_db()
    assert request.attempts == 2
    retried = AuditEvent.objects.get(request_id=request.pk, action="rollback_retried")
    assert retried.detail == {"attempt": 1, "sqlstate": "40001"}


@pytest.mark.django_db
def test_the_commands_request_and_execute_with_json_and_exit_codes(rollback_env, operator, approver):
    env = rollback_env
    snap = take_verified_snapshot(env, operator)
    out = io.StringIO()
    call_command(
        "request_rollback",
        "--target", env.name, "--to", "r2", "--reason", "cli test", "--actor", "olga",
        "--snapshot", str(snap.pk), "--json", stdout=out,
    )  # fmt: skip
    created = json.loads(out.getvalue())
    assert created["status"] == "pending" and created["gate"] is None and created["heads"] == ["r3"]
    request = RollbackRequest.objects.get(pk=created["id"])
    assert request.snapshot_id == snap.pk
    event = AuditEvent.objects.get(request_id=request.pk, action="rollback_requested")
    assert event.actor == "olga" and event.user_agent == "cli: manage.py request_rollback"

    with pytest.raises(CommandError) as bad_user:
        call_command("execute_rollback", str(request.pk), "--code", "1", "--actor", "nobody", "--json")
    assert bad_user.value.returncode == 2
    with pytest.raises(CommandError) as bad_id:
        call_command("execute_rollback", "999999", "--code", "1", "--actor", "olga")
    assert bad_id.value.returncode == 2

    with pytest.raises(CommandError) as no_id:
        call_command("execute_rollback", "--code", "1", "--actor", "olga")
    assert no_id.value.returncode == 2
    out = io.StringIO()
    call_command("execute_rollback", "--reconcile", "--json", stdout=out)
    assert json.loads(out.getvalue()) == []

    out = io.StringIO()
    with pytest.raises(CommandError) as wrong:
        call_command(
            "execute_rollback", str(request.pk), "--code", "00000000x", "--actor", "olga", "--json", stdout=out
        )
    assert wrong.value.returncode == 1
    assert json.loads(out.getvalue())["gate"] == "code"

    out = io.StringIO()
    code = code_from_outbox(request.pk)
    call_command("execute_rollback", str(request.pk), "--code", code, "--actor", "olga", "--json", stdout=out)
    done = json.loads(out.getvalue())
    assert done == {"id": request.pk, "status": "succeeded", "gate": None, "message": done["message"], "heads": ["r2"]}
    assert env.heads() == ["r2"]

    out = io.StringIO()
    with pytest.raises(CommandError) as unknown:
        call_command(
            "request_rollback", "--target", env.name, "--to", "zzz", "--reason", "x", "--actor", "olga", "--json",
            stdout=out,
        )  # fmt: skip
    assert unknown.value.returncode == 1 and json.loads(out.getvalue())["status"] == "refused"


@pytest.mark.django_db
@pytest.mark.parametrize("ends_it", ["connection.commit()", "connection.exec_driver_sql('COMMIT')"])
def test_an_env_py_that_commits_on_its_own_is_stopped_before_anything_becomes_permanent(
    rollback_env, operator, approver, ends_it
):
    env = rollback_env
    env_py = env.scripts.root / "migrations" / "env.py"
    committing = env_py.read_text().replace(
        "    with context.begin_transaction():\n        context.run_migrations()\n\n\ndef run_migrations_online",
        f"    with context.begin_transaction():\n        context.run_migrations()\n    {ends_it}\n\n\n"
        "def run_migrations_online",
    )
    assert ends_it in committing
    env_py.write_text(committing)
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r1", snapshot=snap)
    before = env.state()

    with pytest.raises(RollbackFailed) as failed:
        execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))

    assert "end the console's transaction" in str(failed.value) or "COMMIT was sent" in str(failed.value)
    assert "the target is unchanged" in str(failed.value)
    assert env.state() == before  # r3's DROP TABLE and r2's DROP COLUMN never became permanent
    request.refresh_from_db()
    assert request.status == "failed" and request.final_heads == ["r3"]
    assert audit_actions(request.pk)[-2:] == ["rollback_started", "rollback_failed"]


# ------------------------------------------------------------------ real processes
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_process_killed_mid_downgrade_leaves_the_target_unchanged_and_reconcile_marks_it_interrupted(
    roles_present, rollback_env, operator, approver, settings
):
    env = rollback_env
    env.add_revision("r4", "r3", downgrade="op.execute('SELECT pg_sleep(30)')")
    env.add_revision("r5", "r4", upgrade=TIER_UP, downgrade=TIER_DOWN)
    pg_query(env.url, "UPDATE customers SET tier = 'gold'")
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r3", snapshot=snap)
    before = env.state()

    proc = env.manage(settings, "execute_rollback", str(request.pk), "--code", code_from_outbox(request.pk),
                      "--actor", "olga", "--json")  # fmt: skip
    try:
        # r5's DROP COLUMN has run inside the transaction; r4 now sleeps.
        wait_for(
            lambda: sleeping_backends(env.url, "pg_sleep(30)"), timeout=60, what="the downgrade to sleep", proc=proc
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert RollbackRequest.objects.get(pk=request.pk).status == "running"

    # PostgreSQL notices the dead client and rolls the transaction back.
    wait_for(lambda: not sleeping_backends(env.url, "pg_sleep(30)"), timeout=40, what="the server to roll back")
    wait_for(lambda: current_holder(env.config) is None, timeout=20, what="the lock to be free")
    assert env.state() == before

    marked = reconcile(actor=Actor.cron())
    assert [r.pk for r in marked] == [request.pk]
    request.refresh_from_db()
    assert request.status == "interrupted" and request.final_heads == ["r5"]
    assert "unchanged" in request.error
    event = AuditEvent.objects.get(request_id=request.pk, action="rollback_interrupted")
    assert event.detail["unchanged"] is True and event.detail["heads_found"] == ["r5"]
    assert reconcile(actor=Actor.cron()) == []  # idempotent


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_processes_executing_on_one_target_at_once_exactly_one_runs_and_the_other_names_the_holder(
    roles_present, rollback_env, operator, approver, settings
):
    env = rollback_env
    settings.OPS_LOCK_WAIT_SECONDS = 0.5
    env.add_revision("r4", "r3", downgrade="op.execute('SELECT pg_sleep(4)')")
    snap = take_verified_snapshot(env, operator)
    first = make_request(env, operator, to="r3", snapshot=snap, reason="first")
    second = make_request(env, operator, to="r3", snapshot=snap, reason="second")
    codes_by_pk = {r.pk: code_from_outbox(r.pk) for r in (first, second)}
    # `--code -` reads the code from standard input (kept out of the process list).
    procs = {
        pk: env.manage(settings, "execute_rollback", str(pk), "--code", "-", "--actor", "olga", "--json",
                       stdin=subprocess.PIPE)
        for pk in codes_by_pk
    }  # fmt: skip
    for pk, proc in procs.items():
        proc.stdin.write(codes_by_pk[pk] + "\n")
        proc.stdin.close()
        proc.stdin = None  # communicate() below must not touch the closed pipe
    results = {}
    for pk, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        results[pk] = (proc.returncode, json.loads(out), err)

    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 1], results
    winner = next(pk for pk, (code, _, _) in results.items() if code == 0)
    loser = next(pk for pk in results if pk != winner)
    _, refusal, _ = results[loser]
    assert refusal["gate"] == "lock", refusal
    assert f"is locked by olga (request #{winner}" in refusal["message"]
    assert results[winner][1]["status"] == "succeeded" and env.heads() == ["r3"]
    assert RollbackRequest.objects.get(pk=loser).status == "pending"
    assert AuditEvent.objects.filter(request_id=loser, action="rollback_refused", detail__gate="lock").exists()


# ------------------------------------------------------------------ SQLite
def sqlite_state(path) -> tuple:
    with sqlite3.connect(path) as conn:
        heads = sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        schema = {t: [c[1] for c in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return heads, schema, counts


@pytest.mark.django_db
def test_a_sqlite_target_gets_the_same_gate_a_file_lock_and_an_atomic_downgrade(
    tmp_path, script_dir_factory, configure_target, operator, approver, settings
):
    path = tmp_path / "lite.sqlite3"
    sqlite3.connect(path).close()  # the console refuses a SQLite target whose file does not exist
    scripts = script_dir_factory(f"sqlite:///{path}")
    scripts.add("r1", None, upgrade=R1_UP, downgrade="op.drop_table('customers')")
    scripts.add("r2", "r1", upgrade=R2_UP, downgrade="op.drop_column('customers', 'email')")
    scripts.add("r3", "r2", upgrade=R3_UP, downgrade="op.drop_table('notes')")
    scripts.add("r4", "r3", downgrade="op.execute('DROP TABLE no_such_table')")
    scripts.add("r5", "r4", upgrade=TIER_UP, downgrade=TIER_DOWN)
    configure_target("lite", f"sqlite:///{path}", scripts.ini)
    env = RollbackEnv("lite", f"sqlite:///{path}", scripts)
    env.upgrade()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO customers (id, name, email, tier) VALUES (1, 'Ada', 'a@x', 'gold'), (2, 'Alan', 'b@x', 'gold')"
        )
    env.sync()
    snap = take_verified_snapshot(env, operator)
    assert snap.format == "sqlite"
    request = make_request(env, operator, to="r3", snapshot=snap)
    assert request.steps == ["r5", "r4"]
    assert {(d["kind"], d["table"], d["column"], d["non_null"]) for d in request.destructive} == {
        ("DROP COLUMN", "customers", "tier", 2),
        ("DROP TABLE", "no_such_table", None, None),  # counted as missing: "table not found"
    }
    code = code_from_outbox(request.pk)
    before = sqlite_state(path)

    settings.OPS_LOCK_WAIT_SECONDS = 0.2
    with target_lock(env.config, holder=LockHolder(user="mallory", request_id=77), wait_seconds=0):
        assert sqlite_lock_path(env.config).exists()
        with pytest.raises(GateRefused) as refused:
            execute_request(request.pk, code=code, actor=operator_actor(operator))
    assert refused.value.gate == "lock" and "locked by mallory (request #77" in str(refused.value)
    assert sqlite_state(path) == before

    with pytest.raises(RollbackFailed, match="no_such_table"):
        execute_request(request.pk, code=code, actor=operator_actor(operator))
    assert sqlite_state(path) == before  # the DROP COLUMN of r5 was rolled back too

    second = make_request(env, operator, to="r4", snapshot=snap)
    result = execute_request(second.pk, code=code_from_outbox(second.pk), actor=operator_actor(operator))
    heads, schema, _ = sqlite_state(path)
    assert result.status == "succeeded" and heads == ["r4"] and "tier" not in schema["customers"]


@pytest.mark.django_db
def test_a_lock_that_cannot_be_taken_is_an_audited_refusal_at_the_lock_gate(
    tmp_path, script_dir_factory, configure_target, operator, approver
):
    path = tmp_path / "lockless.sqlite3"
    sqlite3.connect(path).close()
    scripts = script_dir_factory(f"sqlite:///{path}")
    scripts.add("r1", None, upgrade=R1_UP, downgrade="op.drop_table('customers')")
    scripts.add("r2", "r1", upgrade=R2_UP, downgrade="op.drop_column('customers', 'email')")
    configure_target("lockless", f"sqlite:///{path}", scripts.ini)
    env = RollbackEnv("lockless", f"sqlite:///{path}", scripts)
    env.upgrade()
    env.sync()
    request = make_request(env, operator, to="r1", snapshot=take_verified_snapshot(env, operator))
    sqlite_lock_path(env.config).mkdir()  # something else sits where the lock file goes
    before = sqlite_state(path)

    with pytest.raises(GateRefused) as refused:
        execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))

    assert refused.value.gate == "lock" and "lock file" in str(refused.value)
    assert sqlite_state(path) == before
    request.refresh_from_db()
    assert request.status == "pending" and request.code_used_at is None and request.last_refusal_gate == "lock"
    assert audit_actions(request.pk)[-1] == "rollback_refused"


@pytest.mark.django_db
def test_a_failed_downgrade_never_shows_the_target_password_or_the_code_in_page_log_or_audit(
    client, pg_database_factory, script_dir_factory, configure_target, snapshot_dir, operator, approver, caplog, capfd
):
    caplog.set_level("DEBUG")
    password = "Pw-n0t-f0r-l0gs"
    url = pg_database_factory()
    secret_url = url.replace("postgres@", f"postgres:{password}@", 1)  # trust auth ignores it
    assert password in secret_url
    env = build_rollback_env("rbt", secret_url, script_dir_factory(url), configure_target)
    env.add_revision("r4", "r3", downgrade="op.execute('ALTER TABLE no_such_table DROP COLUMN nothing')")
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r2", snapshot=snap)
    code = code_from_outbox(request.pk)
    before = env.state()

    client.force_login(operator)
    queued = client.post(
        reverse("admin:opsapp_rollbackrequest_execute", args=[request.pk]), {"code": code, "confirmed": "yes"}
    )
    run_queued_jobs()  # the worker runs it; the operation page shows how it ended
    page = client.get(queued.url)

    text = page.content.decode()
    assert page.status_code == 200 and "no_such_table" in text  # the failure is shown...
    request.refresh_from_db()
    assert request.status == "failed" and env.state() == before
    assert "Running downgrade r4 -> r3" in caplog.text  # the log was captured (Alembic's INFO lines)
    out, err = capfd.readouterr()
    events = json.dumps(list(AuditEvent.objects.values()), default=str)
    row = json.dumps(RollbackRequest.objects.filter(pk=request.pk).values().get(), default=str)
    from django_tasks_db.models import DBTaskResult

    from opsapp.models import Operation

    ops = json.dumps(list(Operation.objects.values()), default=str)
    queue = json.dumps(list(DBTaskResult.objects.values()), default=str)
    assert queue != "[]" and ops != "[]"
    for where, content in {"page": text, "log": caplog.text, "stdout": out, "stderr": err, "audit": events,
                           "request row": row, "operation": ops, "queue": queue}.items():  # fmt: skip
        assert password not in content, where  # ...but never the password
        assert code not in content, where  # nor the code


@pytest.mark.django_db
@pytest.mark.parametrize("isolation", ["SERIALIZABLE", "REPEATABLE READ"])
def test_the_downgrade_runs_in_one_transaction_at_the_targets_isolation_level_with_a_lock_timeout(
    rollback_env, configure_target, operator, approver, settings, isolation
):
    env = rollback_env
    configure_target(env.name, env.url, env.scripts.ini, isolation)
    settings.OPS_LOCK_TIMEOUT_MS = 4321
    record = "SELECT current_setting('transaction_isolation'), current_setting('lock_timeout'), txid_current()"
    # Two steps, each recording what its statements ran under: one transaction means one txid.
    env.add_revision(
        "r4",
        "r3",
        upgrade='op.execute("CREATE TABLE probe (iso text, lock_timeout text, txid bigint)")',
        downgrade=f'op.execute("INSERT INTO probe {record}")',
    )
    env.add_revision("r5", "r4", downgrade=f'op.execute("INSERT INTO probe {record}")')
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r3", snapshot=snap)

    result = execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))

    assert result.status == "succeeded" and env.heads() == ["r3"]
    rows = pg_query(env.url, "SELECT iso, lock_timeout, txid FROM probe")
    assert len(rows) == 2 and len({txid for _, _, txid in rows}) == 1, rows
    assert {(iso, timeout) for iso, timeout, _ in rows} == {(isolation.lower(), "4321ms")}


# ------------------------------------------------------------ the failing step
FAILING_STATEMENT = "ALTER TABLE no_such_table DROP COLUMN nothing"


def failing_request(env, operator):
    """rbt r5 -> r2 whose second step, r4, fails with 42P01 on FAILING_STATEMENT."""
    env.add_revision("r4", "r3", downgrade=f"op.execute('{FAILING_STATEMENT}')")
    env.add_revision("r5", "r4", upgrade=TIER_UP, downgrade=TIER_DOWN)
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r2", snapshot=snap)
    assert request.steps == ["r5", "r4", "r3"]
    return request


@pytest.mark.django_db
def test_a_failed_downgrade_names_the_revision_the_statement_and_the_sqlstate_on_record_and_in_the_audit(
    rollback_env, operator, approver
):
    env = rollback_env
    request = failing_request(env, operator)
    before = env.state()

    with pytest.raises(RollbackFailed) as failed:
        execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))

    message = str(failed.value)
    assert "revision r4" in message and FAILING_STATEMENT in message and "SQLSTATE 42P01" in message
    assert failed.value.revision == "r4" and failed.value.statement == FAILING_STATEMENT
    assert env.state() == before
    request.refresh_from_db()
    assert (request.failed_revision, request.failed_statement, request.sqlstate) == ("r4", FAILING_STATEMENT, "42P01")
    event = AuditEvent.objects.get(request_id=request.pk, action="rollback_failed")
    assert event.detail["failed_revision"] == "r4"
    assert event.detail["failed_statement"] == FAILING_STATEMENT and event.detail["sqlstate"] == "42P01"
    assert "revision r4" in event.message and FAILING_STATEMENT in event.message


@pytest.mark.django_db
def test_execute_rollback_names_the_failed_revision_statement_and_sqlstate_in_text_and_json(
    rollback_env, operator, approver
):
    env = rollback_env
    request = failing_request(env, operator)
    code = code_from_outbox(request.pk)
    out = io.StringIO()

    with pytest.raises(CommandError) as failed:
        call_command("execute_rollback", str(request.pk), "--code", code, "--actor", "olga", "--json", stdout=out)

    assert failed.value.returncode == 1
    text = str(failed.value)
    assert "revision r4" in text and FAILING_STATEMENT in text and "SQLSTATE 42P01" in text
    data = json.loads(out.getvalue())
    assert data["status"] == "failed" and data["heads"] == ["r5"]
    assert (data["failed_revision"], data["failed_statement"], data["sqlstate"]) == ("r4", FAILING_STATEMENT, "42P01")
    assert env.heads() == ["r5"]


@pytest.mark.django_db
def test_the_request_page_names_the_failed_revision_statement_and_sqlstate(client, rollback_env, operator, approver):
    env = rollback_env
    request = failing_request(env, operator)
    client.force_login(operator)

    client.post(
        reverse("admin:opsapp_rollbackrequest_execute", args=[request.pk]),
        {"code": code_from_outbox(request.pk), "confirmed": "yes"},
    )
    assert run_queued_jobs() == 1
    page = client.get(reverse("admin:opsapp_rollbackrequest_change", args=[request.pk])).content.decode()

    failure = page.split('id="failure"')[1].split("</div>")[0]
    assert "<code>r4</code>" in failure and FAILING_STATEMENT in failure and "42P01" in failure
    assert env.heads() == ["r5"]
