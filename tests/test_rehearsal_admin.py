"""The "Rehearse" action and the rehearsal panel of the request page (real target, real pg_restore).

Rehearse queues an operation of kind `rehearsal`; a real `manage.py db_worker`
process runs it (issue 14: "the rehearsal shows progress as an operation").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import operations_support
import pytest

pytest_plugins = ["rollback_fixtures"]

from conftest import pg_query  # noqa: E402
from django.urls import reverse  # noqa: E402
from rollback_fixtures import (  # noqa: E402
    audit_actions,
    make_request,
    operator_actor,
    take_verified_snapshot,
    wait_for,
)

from opsapp.models import AuditEvent, Operation, Rehearsal  # noqa: E402
from opsapp.services.rollback.requests import attach_snapshot  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def url(name: str, *args) -> str:
    return reverse(f"admin:opsapp_rollbackrequest_{name}", args=args)


def worker_env(env, settings, **extra: str) -> dict[str, str]:
    child = env.subprocess_env(settings)
    child["OPS_HEARTBEAT_SECONDS"] = "0.2"
    child.update(extra)
    return child


def start_worker(env: dict[str, str], *extra: str) -> subprocess.Popen:
    return operations_support.start_worker(env, *extra, split_output=True)


def run_batch(env: dict[str, str]) -> str:
    proc = start_worker(env, "--batch")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"{out}\n{err}"
    return out + err


def database_exists(name: str) -> bool:
    return bool(
        pg_query(
            "postgresql://postgres@127.0.0.1:5432/postgres", "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        )
    )


def test_rehearse_queues_an_operation_a_worker_runs_it_and_the_request_page_shows_the_measured_losses(
    client, ready_request, operator, settings
):
    settings.OPS_REQUIRE_REHEARSAL = True
    r = ready_request
    before = r.env.state()
    client.force_login(operator)
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearse-form"' in page and "Not rehearsed yet" in page
    assert "no rehearsal of its plan" in page  # gate "rehearsal" in the gate table

    response = client.post(url("rehearse", r.request.pk), {"round_trip": "1"})

    op = Operation.objects.get(kind="rehearsal")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:opsapp_operation_change", args=[op.pk])
    assert (op.state, op.request_id, op.params, op.requested_by_username) == (
        "queued",
        r.request.pk,
        {"round_trip": True},
        operator.username,
    )
    assert not Rehearsal.objects.exists()  # nothing ran in the web request
    page = client.get(url("change", r.request.pk)).content.decode()
    assert f'A rehearsal is queued as <a href="{response["Location"]}">operation #{op.pk}</a>' in page

    log = run_batch(worker_env(r.env, settings))

    op.refresh_from_db()
    rehearsal = Rehearsal.objects.get(request=r.request)
    assert op.state == "succeeded", (op.error, log)
    assert op.result["rehearsal"] == rehearsal.pk and op.result["status"] == "succeeded"
    assert op.progress_done == op.progress_total == 3  # the restore, then the plan's two steps
    assert op.progress_unit == "steps" and op.progress_label == "done"
    assert rehearsal.started_by == operator.username and rehearsal.round_trip
    op_page = client.get(response["Location"]).content.decode()
    assert f"Rehearsal #{rehearsal.pk}: rehearsed on a copy of snapshot #{r.snapshot.pk}: OK in" in op_page
    assert "copy restored; 2 of 2 steps reverted on it" in op_page
    page = client.get(url("change", r.request.pk)).content.decode()
    assert f"rehearsed on a copy of snapshot #{r.snapshot.pk}: OK in" in page
    assert "destroys 2 rows of notes and 3 values of customers.email" in page
    assert 'id="round-trip"' in page and "do not come back" in page
    assert 'id="rehearsal-differences"' not in page  # the analysis and the rehearsal agree here
    assert 'id="rehearsal-operation"' not in page  # nothing queued any more
    assert r.env.state() == before
    assert not database_exists(rehearsal.scratch_name)
    # Audited as the operator who pressed the button, not as the worker.
    started = AuditEvent.objects.get(request_id=r.request.pk, action="rehearsal_started")
    assert started.actor == operator.username


def test_the_page_flags_where_the_rehearsal_and_the_static_analysis_disagree(client, ready_request, operator, settings):
    r = ready_request
    # A note added after the request was analysed: the snapshot now holds 3, the analysis said 2.
    pg_query(r.env.url, "INSERT INTO notes (id, body) VALUES (3, 'third')")
    snap = take_verified_snapshot(r.env, operator)
    attach_snapshot(r.request, snap.pk, actor=operator_actor(operator))
    client.force_login(operator)
    client.post(url("rehearse", r.request.pk))
    run_batch(worker_env(r.env, settings))
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearsal-differences"' in page
    assert "notes: the analysis counted 2 rows, the rehearsal destroyed 3" in page


def test_a_second_rehearse_while_one_is_queued_is_refused_and_audited(client, ready_request, operator):
    r = ready_request
    client.force_login(operator)
    client.post(url("rehearse", r.request.pk))
    first = Operation.objects.get(kind="rehearsal")

    # The page no longer offers the button: a note links to the queued operation instead.
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearse-form"' not in page and 'value="Rehearse"' not in page
    operation_url = reverse("admin:opsapp_operation_change", args=[first.pk])
    assert (
        f'A rehearsal of this request is queued as <a href="{operation_url}">operation #{first.pk}</a>; '
        "one runs at a time" in page
    )
    # A second POST all the same (a page opened before the first click) is refused and audited.
    response = client.post(url("rehearse", r.request.pk), follow=True)

    assert (
        f"Rehearsal not queued: A rehearsal of request #{r.request.pk} is already queued as operation #{first.pk}"
        in (response.content.decode())
    )
    assert Operation.objects.filter(kind="rehearsal").count() == 1
    refused = AuditEvent.objects.filter(request_id=r.request.pk, action="rehearsal_failed", outcome="refused")
    assert refused.count() == 1 and refused.get().detail["reason"] == "queued"


def test_the_rehearse_button_is_back_once_the_rehearsal_has_run_and_stays_away_while_one_runs(
    client, ready_request, operator, settings
):
    r = ready_request
    client.force_login(operator)
    client.post(url("rehearse", r.request.pk))
    op = Operation.objects.get(kind="rehearsal")
    Operation.objects.filter(pk=op.pk).update(state="running")
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearse-form"' not in page and "is running as" in page
    Operation.objects.filter(pk=op.pk).update(state="queued")

    run_batch(worker_env(r.env, settings))

    assert Operation.objects.get(pk=op.pk).state == "succeeded"
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearse-form"' in page and 'id="rehearse-in-progress"' not in page
    # A rehearsal started from the command line has no operation: its running row hides the button too.
    running = Rehearsal.objects.create(
        request=r.request, snapshot=r.snapshot, started_by=operator.username, status="running"
    )
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearse-form"' not in page
    assert f'Rehearsal <a href="#rehearsal">#{running.pk}</a> of this request is running' in page


def test_a_rehearsal_refused_in_the_worker_fails_its_operation_and_the_request_page_says_why(
    client, ready_request, operator, settings
):
    r = ready_request
    before = r.env.state()
    path = next(p for p in r.env.scripts.versions.glob("r3*.py"))
    path.write_text(path.read_text().replace("op.drop_table('notes')", "op.drop_table('notes')  # edited"))
    client.force_login(operator)
    client.post(url("rehearse", r.request.pk))

    run_batch(worker_env(r.env, settings))

    op = Operation.objects.get(kind="rehearsal")
    assert op.state == "failed" and "changed" in op.error
    assert not Rehearsal.objects.exists()  # refused before any copy was made
    page = client.get(url("change", r.request.pk)).content.decode()
    assert 'id="rehearsal-operation"' in page and "did not run" in page
    assert r.env.state() == before
    assert "rehearsal_failed" in audit_actions(r.request.pk)


def test_a_rehearsal_whose_downgrade_fails_fails_its_operation_keeping_the_finding(
    rollback_env, roles_present, operator, approver, settings
):
    rollback_env.add_revision(
        "r4", "r3", upgrade="pass", downgrade="op.alter_column('customers', 'name', nullable=False)"
    )
    pg_query(rollback_env.url, "INSERT INTO customers (id, name, email) VALUES (4, NULL, 'n@example.test')")
    snap = take_verified_snapshot(rollback_env, operator)
    request = make_request(rollback_env, operator, to="r1", snapshot=snap)
    from opsapp.services.operations.queue import enqueue_rehearsal

    op = enqueue_rehearsal(request.pk, actor=operator_actor(operator))
    run_batch(worker_env(rollback_env, settings))
    op.refresh_from_db()
    rehearsal = Rehearsal.objects.get(request=request)
    assert rehearsal.status == "failed" and rehearsal.failed_revision == "r4"
    assert op.state == "failed"
    assert op.result["rehearsal"] == rehearsal.pk and op.result["status"] == "failed"
    assert "FAILED" in op.error and "r4" in op.error


def test_a_worker_killed_mid_rehearsal_leaves_an_interrupted_operation_and_the_next_worker_drops_the_copy(
    rollback_env, roles_present, operator, approver, settings
):
    rollback_env.add_revision("r4", "r3", upgrade="pass", downgrade="op.execute('SELECT pg_sleep(60)')")
    snap = take_verified_snapshot(rollback_env, operator)
    request = make_request(rollback_env, operator, to="r1", snapshot=snap)
    before = rollback_env.state()
    from opsapp.services.operations.queue import enqueue_rehearsal

    op = enqueue_rehearsal(request.pk, actor=operator_actor(operator))
    env = worker_env(rollback_env, settings)
    worker = start_worker(env)
    try:
        rehearsal = wait_for(
            lambda: Rehearsal.objects.filter(request=request).first(), timeout=90, what="the rehearsal", proc=worker
        )
        name = rehearsal.scratch_name
        wait_for(
            lambda: pg_query(
                "postgresql://postgres@127.0.0.1:5432/postgres",
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE %s",
                (name, "%pg_sleep(60)%"),
            ),
            timeout=90,
            what="the rehearsal's downgrade on the copy",
            proc=worker,
        )
        assert Operation.objects.get(pk=op.pk).result == {"rehearsal": rehearsal.pk}
        wait_for(
            lambda: (
                "step" in Operation.objects.get(pk=op.pk).progress_label
                or "downgrading" in Operation.objects.get(pk=op.pk).progress_label
            ),
            timeout=10,
            what="the rehearsal's phase on the operation",
        )
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()
    assert Operation.objects.get(pk=op.pk).state == "running"  # nobody has looked yet
    assert database_exists(name)  # the killed worker left its copy behind

    from opsapp.services.rehearsal import scratch

    # The server drops the dead worker's idle session (and the copy's lock) at once; its sleeping one later.
    def lock_free() -> bool:
        live = scratch.live_names()
        return live is not None and name not in live

    wait_for(lock_free, timeout=30, what="the copy's lock to be free")

    def reconciled() -> bool:
        # A worker's start-up reconcile; the server may notice the dead worker's sessions only a moment
        # later (a busy backend learns of its dead client when it next talks to it), so look again.
        run_batch(env)
        return Operation.objects.get(pk=op.pk).state != "running"

    wait_for(reconciled, timeout=120, what="a worker's reconcile to end the dead operation")

    dead = Operation.objects.get(pk=op.pk)
    assert dead.state == "interrupted", dead.error
    assert f"rehearsal #{rehearsal.pk} interrupted, its scratch copy {name} dropped" in dead.error
    assert Rehearsal.objects.get(pk=rehearsal.pk).status == "interrupted"
    assert not database_exists(name)
    assert rollback_env.state() == before
    assert {"rehearsal_interrupted", "operation_interrupted"} <= set(audit_actions(request.pk))


def test_the_command_enqueues_a_rehearsal_and_prints_the_operation_id(ready_request, operator, settings):
    proc = ready_request.env.manage(
        settings,
        "rehearse_rollback",
        str(ready_request.request.pk),
        "--actor",
        operator.username,
        "--round-trip",
        "--enqueue",
        "--json",
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    payload = json.loads(out)
    op = Operation.objects.get(pk=payload["operation"])
    assert payload == {"operation": op.pk, "kind": "rehearsal", "target": ready_request.env.name, "state": "queued"}
    assert op.params == {"round_trip": True} and op.request_id == ready_request.request.pk
    assert not Rehearsal.objects.exists()


def test_a_running_rehearsal_cannot_be_cancelled_but_a_queued_one_can(ready_request, operator):
    from opsapp.services.operations.queue import CannotCancel, cancel_operation, enqueue_rehearsal

    actor = operator_actor(operator)
    op = enqueue_rehearsal(ready_request.request.pk, actor=actor)
    Operation.objects.filter(pk=op.pk).update(state="running")
    with pytest.raises(CannotCancel) as caught:
        cancel_operation(op.pk, actor=actor)
    assert "a running rehearsal cannot be cancelled" in str(caught.value)
    assert Operation.objects.get(pk=op.pk).cancel_requested_at is None
    Operation.objects.filter(pk=op.pk).update(state="queued")
    assert cancel_operation(op.pk, actor=actor).state == "cancelled"


def test_rehearse_is_post_only_and_needs_the_change_permission(client, ready_request, auditor):
    r = ready_request
    client.force_login(auditor)
    assert client.post(url("rehearse", r.request.pk)).status_code == 403
    assert client.get(url("rehearse", r.request.pk)).status_code == 403
    assert not Rehearsal.objects.exists()


def test_get_on_rehearse_changes_nothing(client, ready_request, operator):
    client.force_login(operator)
    assert client.get(url("rehearse", ready_request.request.pk)).status_code == 405
    assert not Rehearsal.objects.exists()


# ------------------------------------------------------------------ settings checks
def test_a_rehearsal_url_that_is_not_postgresql_fails_check_e070(settings):
    from opsapp.checks import check_rehearsal_settings

    settings.OPS_REHEARSAL_URL = "mysql://ops:secret@db/ops"
    errors = check_rehearsal_settings()
    assert [e.id for e in errors] == ["opsapp.E070"]
    assert "secret" not in errors[0].msg


def test_zero_restore_jobs_fail_check_e071(settings):
    from opsapp.checks import check_rehearsal_settings

    settings.OPS_REHEARSAL_RESTORE_JOBS = 0
    assert [e.id for e in check_rehearsal_settings()] == ["opsapp.E071"]


def test_a_restore_memory_postgresql_would_refuse_fails_check_e120(settings):
    from opsapp.checks import check_rehearsal_settings

    for bad in (0, 2097152):
        settings.OPS_REHEARSAL_RESTORE_MEMORY_MB = bad
        assert [e.id for e in check_rehearsal_settings()] == ["opsapp.E120"]
    settings.OPS_REHEARSAL_RESTORE_MEMORY_MB = 256
    assert check_rehearsal_settings() == []
