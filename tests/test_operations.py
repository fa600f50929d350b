"""Operations in process: commands (--enqueue, show_operation, cancel_operation), admin pages, checks (issue 13).

The queued jobs run through django-tasks-db's own claim and `run_task`
(tests/operations_support.py); worker processes, kill -9 and parallelism
are in tests/test_operations_workers.py.
"""

from __future__ import annotations

import html
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from operations_support import run_queued_jobs
from rollback_fixtures import code_from_outbox

from opsapp.models import AuditEvent, Operation, RollbackRequest, Snapshot

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def test_take_snapshot_enqueue_prints_the_operation_id_and_show_operation_follows_it(rollback_env):
    code, out = run("take_snapshot", "--target", rollback_env.name, "--enqueue", "--json")
    assert code == 0
    queued = json.loads(out)
    op = Operation.objects.get(pk=queued["operation"])
    assert (op.kind, op.state, queued["state"]) == ("snapshot", "queued", "queued")
    assert not Snapshot.objects.exists()  # nothing ran in the command
    code, out = run("show_operation", str(op.pk), "--json")
    assert code == 0 and json.loads(out)["state"] == "queued"
    assert run_queued_jobs() == 1
    code, out = run("show_operation", str(op.pk), "--wait", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["state"] == "succeeded"
    assert Snapshot.objects.get(pk=shown["result"]["snapshot"]).status == "verified"
    assert shown["progress"]["percent"] == 100 and shown["progress"]["unit"] == "bytes"


def test_sync_revisions_all_enqueue_fans_out_one_job_per_target(
    rollback_env, pg_database_factory, script_dir_factory, configure_target, settings
):
    from rollback_fixtures import build_rollback_env

    url = pg_database_factory()
    other = build_rollback_env("second", url, script_dir_factory(url), configure_target)
    code, out = run("sync_revisions", "--all", "--enqueue", "--json")
    assert code == 0
    listed = json.loads(out)
    names = [item["target"] for item in listed]
    assert sorted(names) == sorted(settings.OPS_TARGETS) and {rollback_env.name, other.name} <= set(names)
    assert Operation.objects.filter(kind="sync", state="queued").count() == len(names)
    assert run_queued_jobs() == len(names)
    for name in (rollback_env.name, other.name):
        assert Operation.objects.get(target__name=name).state == "succeeded"


def test_show_operation_of_an_unknown_id_is_bad_usage():
    code, _ = run("show_operation", "999999")
    assert code == 2


def test_a_failed_operation_makes_show_operation_exit_1(rollback_env, settings):
    code, out = run("take_snapshot", "--target", rollback_env.name, "--enqueue", "--json")
    settings.OPS_PG_DUMP = "/nonexistent/pg_dump"
    run_queued_jobs()
    code, out = run("show_operation", str(json.loads(out)["operation"]), "--json")
    shown = json.loads(out)
    assert code == 1 and shown["state"] == "failed" and "OPS_PG_DUMP" in shown["error"]


def test_cancel_operation_cancels_a_queued_one_and_refuses_a_finished_one(rollback_env, operator):
    _, out = run("take_snapshot", "--target", rollback_env.name, "--enqueue", "--json")
    op_id = json.loads(out)["operation"]
    code, out = run("cancel_operation", str(op_id), "--actor", operator.username, "--json")
    assert code == 0 and json.loads(out)["state"] == "cancelled"
    assert run_queued_jobs() == 1  # the job is taken, sees the cancel and does nothing
    assert Operation.objects.get(pk=op_id).state == "cancelled" and not Snapshot.objects.exists()
    event = AuditEvent.objects.get(action="operation_cancelled")
    assert event.actor == operator.username
    code, _ = run("cancel_operation", str(op_id), "--actor", operator.username)
    assert code == 1  # finished: refused, and nothing changed
    assert AuditEvent.objects.filter(action="operation_cancelled").count() == 1


def test_execute_rollback_enqueue_checks_the_code_first_and_a_wrong_one_queues_nothing(
    ready_request, operator, approver
):
    env = ready_request.env
    before = env.state()
    code, out = run(
        "execute_rollback",
        str(ready_request.request.pk),
        "--code",
        "00000000",
        "--actor",
        operator.username,
        "--enqueue",
        "--json",
    )
    assert code == 1 and json.loads(out)["gate"] == "code"
    assert not Operation.objects.exists() and env.state() == before
    code, out = run(
        "execute_rollback",
        str(ready_request.request.pk),
        "--code",
        ready_request.code,
        "--actor",
        operator.username,
        "--enqueue",
        "--json",
    )
    queued = json.loads(out)
    assert code == 0 and queued["status"] == "queued"
    assert env.state() == before  # nothing ran yet
    request = RollbackRequest.objects.get(pk=ready_request.request.pk)
    assert request.status == "pending" and request.code_used_at is not None  # the code is spent at once
    assert run_queued_jobs() == 1
    assert RollbackRequest.objects.get(pk=request.pk).status == "succeeded" and env.heads() == ["r1"]
    op = Operation.objects.get(pk=queued["operation"])
    assert op.state == "succeeded" and op.request_id == request.pk


def test_a_request_already_queued_cannot_be_queued_twice(ready_request, operator, approver):
    from rollback_fixtures import operator_actor

    from opsapp.services.errors import GateRefused
    from opsapp.services.operations.downgrade import enqueue_downgrade
    from opsapp.services.rollback.codes import issue_code

    request = ready_request.request
    enqueue_downgrade(request.pk, code=ready_request.code, actor=operator_actor(operator))
    request.refresh_from_db()
    issue_code(request, actor=operator_actor(operator))  # a new code does not allow a second job
    with pytest.raises(GateRefused) as refused:
        enqueue_downgrade(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))
    assert "already queued as operation" in str(refused.value)
    assert Operation.objects.count() == 1


# ------------------------------------------------------------------ admin
def test_the_operation_page_shows_a_progress_bar_and_refreshes_only_while_active(client, rollback_env, operator):
    from opsapp.models import OperationKind
    from opsapp.services.actors import Actor
    from opsapp.services.operations.queue import enqueue

    op = enqueue(OperationKind.SNAPSHOT, rollback_env.name, actor=Actor.from_user(operator))
    Operation.objects.filter(pk=op.pk).update(
        state="running", progress_done=30 << 20, progress_total=120 << 20, started_at=op.queued_at
    )
    client.force_login(operator)
    page = html.unescape(client.get(reverse("admin:opsapp_operation_change", args=[op.pk])).content.decode())
    page = page.replace("\xa0", " ")
    assert '<meta http-equiv="refresh" content="2">' in page
    assert '<progress id="operation-bar" max="100" value="25">' in page
    assert "30.0 MB written of 120.0 MB (25%)" in page and " left" in page  # bytes, percent, ETA
    Operation.objects.filter(pk=op.pk).update(state="failed", error="pg_dump failed")
    page = client.get(reverse("admin:opsapp_operation_change", args=[op.pk])).content.decode()
    assert 'http-equiv="refresh"' not in page and "pg_dump failed" in page


def test_the_downgrade_page_names_the_step_being_reverted(client, ready_request, operator):
    from rollback_fixtures import operator_actor

    from opsapp.services.operations.downgrade import enqueue_downgrade

    op = enqueue_downgrade(ready_request.request.pk, code=ready_request.code, actor=operator_actor(operator))
    Operation.objects.filter(pk=op.pk).update(
        state="running", progress_done=1, progress_total=2, progress_label="reverting r2 (step 2 of 2)"
    )
    client.force_login(operator)
    page = client.get(reverse("admin:opsapp_operation_change", args=[op.pk])).content.decode()
    assert "reverting r2 (step 2 of 2)" in page and "1 of 2 steps reverted" in page
    assert 'value="50"' in page
    assert "Abort the downgrade" in page


def test_operations_are_listed_with_filters_and_on_the_dashboard(client, rollback_env, operator, auditor):
    from opsapp.models import OperationKind
    from opsapp.services.actors import Actor
    from opsapp.services.operations.queue import enqueue

    op = enqueue(OperationKind.SNAPSHOT, rollback_env.name, actor=Actor.from_user(operator))
    client.force_login(auditor)
    listed = client.get(reverse("admin:opsapp_operation_changelist") + "?state__exact=queued").content.decode()
    assert f"/admin/opsapp/operation/{op.pk}/change/" in listed
    assert "?state__exact=running" in listed and "?kind__exact=snapshot" in listed
    dashboard = client.get(reverse("admin:index")).content.decode()
    assert 'id="dashboard-operations"' in dashboard and f"#{op.pk}" in dashboard
    # An auditor reads, and cannot cancel.
    assert client.post(reverse("admin:opsapp_operation_cancel", args=[op.pk])).status_code == 403
    assert Operation.objects.get(pk=op.pk).state == "queued"


def test_an_operator_cancels_a_queued_operation_through_its_confirmation_page(client, rollback_env, operator):
    from opsapp.models import OperationKind
    from opsapp.services.actors import Actor
    from opsapp.services.operations.queue import enqueue

    op = enqueue(OperationKind.SNAPSHOT, rollback_env.name, actor=Actor.from_user(operator))
    client.force_login(operator)
    url = reverse("admin:opsapp_operation_cancel", args=[op.pk])
    assert "Yes, cancel it" in client.get(url).content.decode()
    assert Operation.objects.get(pk=op.pk).state == "queued"  # a GET changes nothing
    page = client.post(url, follow=True).content.decode()
    assert "cancelled before it started" in page
    assert Operation.objects.get(pk=op.pk).state == "cancelled"
    assert client.get(reverse("admin:opsapp_operation_cancel", args=["nope"])).status_code == 404


def test_the_task_queue_check_refuses_a_non_durable_backend(settings):
    from opsapp.checks import check_task_queue

    assert check_task_queue() == []
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
    settings.OPS_HEARTBEAT_SECONDS = 0
    ids = [e.id for e in check_task_queue()]
    assert ids == ["opsapp.E030", "opsapp.E031"]


def test_prune_leaves_a_long_running_snapshot_job_to_its_workers_lock(rollback_env, operator):
    from datetime import timedelta

    from django.utils import timezone

    from opsapp.models import OperationKind
    from opsapp.services.actors import Actor
    from opsapp.services.operations.queue import enqueue
    from opsapp.services.snapshots.lifecycle import fail_abandoned_snapshots

    op = enqueue(OperationKind.SNAPSHOT, rollback_env.name, actor=Actor.from_user(operator))
    old = timezone.now() - timedelta(days=2)
    running = Snapshot.objects.create(target=op.target, status="running", format="pg_custom")
    orphan = Snapshot.objects.create(target=op.target, status="running", format="pg_custom")
    Snapshot.objects.filter(pk__in=[running.pk, orphan.pk]).update(started_at=old)
    Operation.objects.filter(pk=op.pk).update(state="running", snapshot=running)
    failed = fail_abandoned_snapshots(actor=Actor.cron())
    assert [s.pk for s in failed] == [orphan.pk]  # the job's row is not failed for its age
    assert Snapshot.objects.get(pk=running.pk).status == "running"
