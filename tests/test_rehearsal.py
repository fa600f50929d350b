"""Rehearsals (issue 14): the stored plan run on a scratch copy restored from the request's snapshot.

All on real PostgreSQL with real pg_dump/pg_restore and real Alembic: the
throwaway target `rbt` (tests/rollback_fixtures.py) plus revisions added here
whose downgrade only fails, or only loses data, because of what the rows hold.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

pytest_plugins = ["rollback_fixtures"]

from conftest import pg_query  # noqa: E402
from django.core import mail  # noqa: E402
from rollback_fixtures import (  # noqa: E402
    audit_actions,
    code_from_outbox,
    last_refusal,
    make_request,
    operator_actor,
    take_verified_snapshot,
    wait_for,
)

from opsapp.models import Rehearsal  # noqa: E402
from opsapp.services.errors import GateRefused  # noqa: E402
from opsapp.services.rehearsal.run import RehearsalRefused, reconcile, run_rehearsal  # noqa: E402
from opsapp.services.rollback.requests import execute_request  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)

# Restores NOT NULL on customers.name: fine on an empty table, fails on the NULL a customer row holds.
R4_NOT_NULL_DOWN = "op.alter_column('customers', 'name', existing_type=sa.String(50), nullable=False)"
# A downgrade that leaves something behind the upgrade does not take away: down/up is not the identity.
R4_LEAVES_INDEX_DOWN = "op.create_index('ix_customers_name', 'customers', ['name'])"


def database_exists(name: str) -> bool:
    """Scratch names are checked one by one: under xdist another worker's request may have the same id."""
    return bool(
        pg_query(
            "postgresql://postgres@127.0.0.1:5432/postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        )
    )


def no_scratch_left(rehearsal) -> bool:
    return bool(rehearsal.scratch_name) and not database_exists(rehearsal.scratch_name)


@pytest.fixture
def people(roles_present, operator, approver):
    return operator, approver


def _request_over_r4(env, operator, downgrade: str, *, null_name: bool = False):
    env.add_revision("r4", "r3", upgrade="pass", downgrade=downgrade)
    if null_name:
        pg_query(env.url, "INSERT INTO customers (id, name, email) VALUES (4, NULL, 'nobody@example.test')")
    snap = take_verified_snapshot(env, operator)
    return make_request(env, operator, to="r1", snapshot=snap), snap


def test_a_downgrade_that_fails_only_on_the_data_fails_its_rehearsal_and_execution_is_refused(
    rollback_env, people, settings
):
    operator, approver = people
    settings.OPS_REQUIRE_REHEARSAL = True
    request, snap = _request_over_r4(rollback_env, operator, R4_NOT_NULL_DOWN, null_name=True)
    before = rollback_env.state()

    rehearsal = run_rehearsal(request.pk, actor=operator_actor(operator))

    assert rehearsal.status == "failed"
    assert rehearsal.failed_revision == "r4"
    assert rehearsal.sqlstate == "23502"  # not_null_violation
    assert "ALTER TABLE customers ALTER COLUMN name SET NOT NULL" in rehearsal.failed_statement
    assert rehearsal.snapshot_id == snap.pk and rehearsal.plan_fingerprint == request.plan_fingerprint
    assert rollback_env.state() == before
    assert no_scratch_left(rehearsal)
    assert "rehearsal_failed" in audit_actions(request.pk)
    # The approver's email was sent again, carrying the failure.
    body = mail.outbox[-1].body
    assert f"rehearsed on a copy of snapshot #{snap.pk}: FAILED" in body and "in revision r4" in body

    with pytest.raises(GateRefused) as caught:
        execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))
    assert caught.value.gate == "rehearsal"
    assert "r4" in str(caught.value) and "23502" in str(caught.value)
    assert rollback_env.state() == before
    event = last_refusal(request.pk)
    assert event.detail["gate"] == "rehearsal"
    request.refresh_from_db()
    assert request.status == "pending" and request.code_used_at is None


def test_without_a_rehearsal_execution_is_refused_at_gate_rehearsal(ready_request, operator, settings):
    settings.OPS_REQUIRE_REHEARSAL = True
    r = ready_request
    before = r.env.state()
    with pytest.raises(GateRefused) as caught:
        execute_request(r.request.pk, code=r.code, actor=operator_actor(operator))
    assert caught.value.gate == "rehearsal" and "no rehearsal" in str(caught.value)
    assert r.env.state() == before
    assert last_refusal(r.request.pk).detail["gate"] == "rehearsal"


def test_the_destroyed_counts_of_a_rehearsal_equal_what_the_real_downgrade_removes(
    ready_request, operator, approver, settings
):
    settings.OPS_REQUIRE_REHEARSAL = True
    r = ready_request
    before = r.env.state()

    rehearsal = run_rehearsal(r.request.pk, actor=operator_actor(operator))

    assert rehearsal.status == "succeeded", rehearsal.error
    assert r.env.state() == before  # the production target was not touched
    assert no_scratch_left(rehearsal)
    assert [s["revisions"] for s in rehearsal.steps] == [["r3"], ["r2"]]
    assert rehearsal.duration_ms >= rehearsal.downgrade_ms >= 0 and rehearsal.restore_ms >= 0
    assert set(rehearsal.schema_after) == {"customers"}
    assert set(rehearsal.schema_after["customers"]["columns"]) == {"id", "name"}
    # Measured on the real target right before the real downgrade ...
    notes_rows = pg_query(r.env.url, "SELECT count(*) FROM notes")[0][0]
    emails = pg_query(r.env.url, "SELECT count(email) FROM customers")[0][0]
    customers = pg_query(r.env.url, "SELECT count(*) FROM customers")[0][0]
    body = mail.outbox[-1].body
    assert f"rehearsed on a copy of snapshot #{r.snapshot.pk}: OK in " in body
    assert "destroys 2 rows of notes and 3 values of customers.email" in body

    result = execute_request(r.request.pk, code=code_from_outbox(r.request.pk), actor=operator_actor(operator))

    assert result.status == "succeeded"
    # ... and after it: exactly what the rehearsal recorded.
    heads, schema, counts = r.env.state()
    assert "notes" not in schema and "email" not in schema["customers"]
    assert rehearsal.destroyed == {
        "tables": ["notes"],
        "columns": ["customers.email"],
        "rows": {"notes": notes_rows},
        "values": {"customers.email": emails},
    }
    assert counts["customers"] == customers == rehearsal.rows_after["customers"]
    assert {"rehearsal_started", "rehearsal_succeeded", "rollback_succeeded"} <= set(audit_actions(r.request.pk))


def test_rows_a_downgrade_truncates_or_deletes_in_tables_it_keeps_are_counted_as_the_real_downgrade_removes_them(
    rollback_env, people, settings
):
    """After the downgrade the copy is counted again only where it changed: rows the transaction deleted
    (here through a foreign-key cascade from a table the plan never names) and a TRUNCATE, which no row
    count shows, must both be found."""
    operator, _approver = people
    settings.OPS_REQUIRE_REHEARSAL = True
    for sql in (
        "CREATE TABLE ledger (id int PRIMARY KEY)",
        "INSERT INTO ledger SELECT generate_series(1, 4)",
        "CREATE TABLE visits (id int PRIMARY KEY, customer_id int REFERENCES customers (id) ON DELETE CASCADE)",
        "INSERT INTO visits SELECT g, 1 + mod(g, 3) FROM generate_series(1, 9) g",
        "CREATE TABLE untouched (id int PRIMARY KEY)",
        "INSERT INTO untouched SELECT generate_series(1, 5)",
    ):
        pg_query(rollback_env.url, sql)
    rollback_env.add_revision(
        "r4",
        "r3",
        upgrade="pass",
        downgrade="op.execute('TRUNCATE ledger'); op.execute('DELETE FROM customers WHERE id = 3')",
    )
    snap = take_verified_snapshot(rollback_env, operator)
    request = make_request(rollback_env, operator, to="r1", snapshot=snap)
    lost_visits = pg_query(rollback_env.url, "SELECT count(*) FROM visits WHERE customer_id = 3")[0][0]
    assert lost_visits

    rehearsal = run_rehearsal(request.pk, actor=operator_actor(operator))

    assert rehearsal.status == "succeeded", rehearsal.error
    assert rehearsal.destroyed["rows"] == {"customers": 1, "ledger": 4, "notes": 2, "visits": lost_visits}
    assert rehearsal.rows_after["untouched"] == 5 and rehearsal.rows_after["ledger"] == 0
    result = execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))
    assert result.status == "succeeded"
    for table in ("customers", "ledger", "visits", "untouched"):
        assert pg_query(rollback_env.url, f"SELECT count(*) FROM {table}")[0][0] == rehearsal.rows_after[table]


def test_values_of_a_column_dropped_by_sql_the_analysis_cannot_read_are_still_measured_exactly(
    rollback_env, people, settings
):
    """Values are counted up front only in the columns the static analysis saw dropped; a column dropped
    by dynamic SQL is found inside the downgrade's transaction, which is rolled back, counted, run again."""
    operator, _approver = people
    pg_query(rollback_env.url, "ALTER TABLE customers ADD COLUMN nickname text")
    pg_query(rollback_env.url, "UPDATE customers SET nickname = 'n' || id WHERE id < 3")
    hidden = "op.execute(\"DO $$ BEGIN EXECUTE 'ALTER TABLE customers DROP ' || 'COLUMN nickname'; END $$\")"
    rollback_env.add_revision("r4", "r3", upgrade="pass", downgrade=hidden)
    snap = take_verified_snapshot(rollback_env, operator)
    request = make_request(rollback_env, operator, to="r1", snapshot=snap)
    assert not any(item.get("column") == "nickname" for item in request.destructive)  # invisible to it

    rehearsal = run_rehearsal(request.pk, actor=operator_actor(operator))

    assert rehearsal.status == "succeeded", rehearsal.error
    assert rehearsal.destroyed["values"] == {"customers.email": 3, "customers.nickname": 2}
    assert "customers.nickname" in rehearsal.destroyed["columns"]
    assert [s["revisions"] for s in rehearsal.steps] == [["r4"], ["r3"], ["r2"]]  # the second run's steps only
    assert no_scratch_left(rehearsal)


def test_a_rehearsal_is_refused_when_the_plan_no_longer_matches(ready_request, operator):
    r = ready_request
    # The script file of a reverted step changes after the request was reviewed.
    path = next(p for p in r.env.scripts.versions.glob("r3*.py"))
    path.write_text(path.read_text().replace("op.drop_table('notes')", "op.drop_table('notes')  # edited"))
    with pytest.raises(RehearsalRefused) as caught:
        run_rehearsal(r.request.pk, actor=operator_actor(operator))
    assert "changed" in str(caught.value)
    assert not Rehearsal.objects.filter(request=r.request).exists()  # refused before any copy was made
    assert "rehearsal_failed" in audit_actions(r.request.pk)


def test_a_snapshot_file_altered_after_verification_fails_the_rehearsal_before_anything_runs_on_the_copy(
    ready_request, operator, settings
):
    from opsapp.services.snapshots.lifecycle import snapshot_path

    r = ready_request
    before = r.env.state()
    path = snapshot_path(r.snapshot)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the checksum, re-read beside the restore, can tell
    path.chmod(0o600)
    path.write_bytes(bytes(data))

    rehearsal = run_rehearsal(r.request.pk, actor=operator_actor(operator))

    assert rehearsal.status == "failed"
    assert "Snapshot file check failed" in rehearsal.error and "checksum mismatch" in rehearsal.error
    assert rehearsal.steps == [] and rehearsal.downgrade_ms is None
    assert no_scratch_left(rehearsal)
    assert r.env.state() == before
    settings.OPS_REQUIRE_REHEARSAL = True
    with pytest.raises(GateRefused) as refused:
        execute_request(r.request.pk, code=r.code, actor=operator_actor(operator))
    assert refused.value.gate in ("snapshot", "rehearsal")
    assert r.env.state() == before


def test_the_round_trip_reports_a_migration_whose_down_up_changes_the_schema_and_the_data_lost(rollback_env, people):
    operator, _ = people
    request, _snap = _request_over_r4(rollback_env, operator, R4_LEAVES_INDEX_DOWN)

    rehearsal = run_rehearsal(request.pk, actor=operator_actor(operator), round_trip=True)

    assert rehearsal.status == "succeeded", rehearsal.error
    report = rehearsal.round_trip_report
    assert report["ok"] is False
    assert [m["revisions"] for m in report["migrations"]] == [["r4"]]
    assert any("ix_customers_name" in d for d in report["migrations"][0]["differences"])
    assert report["rows"] == {"notes": 2}
    assert report["values"]["customers.email"] == 3
    assert "ix_customers_name" in report["schema_diff"]
    assert "\\restrict" not in report["schema_diff"]
    assert no_scratch_left(rehearsal)


def test_a_killed_rehearsal_leaves_no_scratch_database_after_reconcile(rollback_env, people, settings):
    operator, _ = people
    request, _snap = _request_over_r4(rollback_env, operator, "op.execute('SELECT pg_sleep(60)')")
    proc = rollback_env.manage(settings, "rehearse_rollback", str(request.pk), "--actor", operator.username)
    try:
        rehearsal = wait_for(
            lambda: Rehearsal.objects.filter(request=request).first(), timeout=60, what="the rehearsal", proc=proc
        )
        name = rehearsal.scratch_name
        wait_for(
            lambda: pg_query(
                rollback_env.url.rsplit("/", 1)[0] + "/postgres",
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
                (name, "%pg_sleep(60)%"),
            ),
            timeout=60,
            what="the rehearsal's downgrade",
            proc=proc,
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert database_exists(name)  # the killed process left its copy behind

    def reconciled():
        reconcile(actor=operator_actor(operator))
        return not database_exists(name) and Rehearsal.objects.get(request=request).status == "interrupted"

    wait_for(reconciled, timeout=30, what="reconcile to drop the scratch copy")
    assert "rehearsal_interrupted" in audit_actions(request.pk)


def test_reconcile_leaves_a_live_rehearsals_copy_alone(ready_request, operator):
    from opsapp.services.rehearsal import scratch

    server = scratch.choose_server(ready_request.env.config)
    with scratch.postgres_scratch(server, ready_request.request.pk) as copy:
        dropped, _ = reconcile(actor=operator_actor(operator))
        assert copy.name not in dropped and database_exists(copy.name)
    assert not database_exists(copy.name)


def test_the_command_prints_the_rehearsal_as_json(ready_request, operator, settings):
    proc = ready_request.env.manage(
        settings, "rehearse_rollback", str(ready_request.request.pk), "--actor", operator.username, "--json"
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    payload = json.loads(out)
    assert payload["status"] == "succeeded"
    assert payload["destroyed"]["rows"] == {"notes": 2}
    assert "restoring snapshot" in err
    # One serializer: the evidence bundle lists the same rehearsal with the same keys and values, plus
    # only what the bundle knows (the operation that ran it and its audit events).
    from opsapp.services.audit.evidence import rehearsal_facts

    (listed,) = rehearsal_facts(ready_request.request)
    assert {k: v for k, v in listed.items() if k not in ("operation", "audit_events")} == payload
    assert (
        sorted(payload["schema_after"]) == ["customers"]
        and "email" not in payload["schema_after"]["customers"]["columns"]
    )


def test_the_command_refuses_bad_usage_with_exit_2(ready_request, operator, settings):
    proc = ready_request.env.manage(settings, "rehearse_rollback", "999999", "--actor", operator.username)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "does not exist" in err


def test_a_sqlite_target_is_rehearsed_on_a_file_copy(
    script_dir_factory, configure_target, snapshot_dir, people, tmp_path
):
    from rollback_fixtures import R1_UP, R2_UP, R3_UP, RollbackEnv

    operator, _ = people
    db = tmp_path / "shop.sqlite3"
    url = f"sqlite:///{db}"
    scripts = script_dir_factory(url)
    scripts.add("r1", None, message="create customers", upgrade=R1_UP, downgrade="op.drop_table('customers')")
    scripts.add("r2", "r1", message="add email", upgrade=R2_UP, downgrade="op.drop_column('customers', 'email')")
    scripts.add("r3", "r2", message="create notes", upgrade=R3_UP, downgrade="op.drop_table('notes')")
    configure_target("lite", url, scripts.ini)
    env = RollbackEnv("lite", url, scripts)
    import sqlite3

    sqlite3.connect(db).close()
    env.upgrade()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO customers (id, name, email) VALUES (1, 'Ada', 'a@x.test'), (2, 'Bo', NULL)")
        conn.execute("INSERT INTO notes (id, body) VALUES (1, 'n')")
    env.sync()
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r1", snapshot=snap)
    before = db.read_bytes()

    rehearsal = run_rehearsal(request.pk, actor=operator_actor(operator))

    assert rehearsal.status == "succeeded", rehearsal.error
    assert rehearsal.server == "file copy"
    assert rehearsal.destroyed["rows"] == {"notes": 1}
    assert rehearsal.destroyed["values"] == {"customers.email": 1}
    assert db.read_bytes() == before  # the target file was not written
    assert not list((settings_var_dir() / "rehearsals").glob("ops_rehearsal_*"))


def settings_var_dir():
    from pathlib import Path

    from django.conf import settings

    return Path(settings.VAR_DIR)


def test_without_a_server_that_may_create_databases_rehearsal_is_unavailable(ready_request, operator, settings):
    import uuid

    from conftest import PG_SERVER

    r = ready_request
    role = f"ops_rehearse_nocreate_{uuid.uuid4().hex[:8]}"
    pg_query(f"{PG_SERVER}/postgres", f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        limited = r.env.url.replace("postgres@", f"{role}@")
        settings.OPS_TARGETS = {
            **settings.OPS_TARGETS,
            r.env.name: {**settings.OPS_TARGETS[r.env.name], "URL": limited},
        }
        settings.OPS_REHEARSAL_URL = ""
        with pytest.raises(RehearsalRefused) as caught:
            run_rehearsal(r.request.pk, actor=operator_actor(operator))
        assert "Rehearsal is unavailable" in str(caught.value) and "OPS_REHEARSAL_URL" in str(caught.value)
        assert not Rehearsal.objects.exists()
        assert "rehearsal_failed" in audit_actions(r.request.pk)
    finally:
        pg_query(f"{PG_SERVER}/postgres", f'DROP ROLE IF EXISTS "{role}"')


def test_a_rehearsal_server_from_ops_rehearsal_url_holds_the_copy(ready_request, operator, settings):
    from conftest import PG_SERVER

    settings.OPS_REHEARSAL_URL = f"{PG_SERVER}/postgres"
    rehearsal = run_rehearsal(ready_request.request.pk, actor=operator_actor(operator))
    assert rehearsal.status == "succeeded" and rehearsal.server == "OPS_REHEARSAL_URL"
    assert no_scratch_left(rehearsal)


def test_the_command_exits_1_when_the_round_trip_loses_data(ready_request, operator, settings):
    proc = ready_request.env.manage(
        settings,
        "rehearse_rollback",
        str(ready_request.request.pk),
        "--actor",
        operator.username,
        "--round-trip",
        "--json",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    payload = json.loads(out)
    assert payload["status"] == "succeeded" and payload["round_trip"] is True
    assert payload["round_trip_report"]["ok"] is False
    assert payload["round_trip_report"]["rows"] == {"notes": 2}
    assert "round trip found problems" in err
