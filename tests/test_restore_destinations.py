"""Restore destinations: settings checks, `restore_snapshot --into-destination [--enqueue]`, the admin's restore page.

The queued restores here run in this process (tests/operations_support.py);
real worker processes, cancel and kill -9 are in tests/test_operations_restore.py.
"""

from __future__ import annotations

import html
import io
import json

import pytest
from conftest import pg_query
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from operations_support import run_queued_jobs
from rollback_fixtures import operator_actor, take_verified_snapshot

from opsapp.models import AuditEvent, Operation

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db

PASSWORD = "hunter2-restore"


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


@pytest.fixture
def destination(pg_database_factory, settings) -> str:
    url = pg_database_factory().replace("postgres@", f"postgres:{PASSWORD}@")
    settings.OPS_RESTORE_DESTINATIONS = {"scratch": {"URL": url, "URL_FILE": ""}}
    return url


def destination_problems(settings, **destinations) -> list[tuple[str, str]]:
    from opsapp.checks import check_restore_destinations

    settings.OPS_RESTORE_DESTINATIONS = destinations
    return [(e.id, e.msg) for e in check_restore_destinations()]


# ------------------------------------------------------------------ checks
def test_the_checks_name_each_bad_destination_with_its_own_id_and_never_echo_a_password(
    settings, rollback_env, tmp_path
):
    assert destination_problems(settings) == []
    assert destination_problems(settings, ok={"URL": "postgresql://u:pw@db/new_copy", "URL_FILE": ""}) == []
    [(check_id, message)] = destination_problems(settings, **{"9bad": {"URL": "postgresql://db/x", "URL_FILE": ""}})
    assert check_id == "opsapp.E110"
    [(check_id, message)] = destination_problems(settings, scratch={"URL": "", "URL_FILE": ""})
    assert check_id == "opsapp.E111" and "OPS_RESTORE_DESTINATION_SCRATCH_URL" in message
    [(check_id, message)] = destination_problems(
        settings, scratch={"URL": "", "URL_FILE": str(tmp_path / "missing-url")}
    )
    assert check_id == "opsapp.E112" and "cannot be read" in message
    [(check_id, message)] = destination_problems(
        settings, scratch={"URL": f"mysql://root:{PASSWORD}@db/x", "URL_FILE": ""}
    )
    assert check_id == "opsapp.E113" and PASSWORD not in message and "***" in message
    target_url = rollback_env.url.replace("postgresql://", "postgres://")  # another spelling of the target's URL
    [(check_id, message)] = destination_problems(settings, scratch={"URL": target_url, "URL_FILE": ""})
    assert check_id == "opsapp.E114" and "target 'rbt'" in message


def test_a_destination_url_may_come_from_a_file(settings, tmp_path, pg_url):
    from opsapp.destinations import get_destination

    secret = tmp_path / "scratch_url"
    secret.write_text(pg_url + "\n")
    assert destination_problems(settings, scratch={"URL": "", "URL_FILE": str(secret)}) == []
    assert get_destination("scratch").url == pg_url


# ------------------------------------------------------------------ command
def test_restore_snapshot_enqueue_needs_a_destination_name_never_a_url(rollback_env, operator, destination):
    snap = take_verified_snapshot(rollback_env, operator)
    code, _, error = run("restore_snapshot", str(snap.pk), "--into", destination, "--enqueue")
    assert code == 2 and "--into-destination" in error and PASSWORD not in error
    code, _, error = run("restore_snapshot", str(snap.pk), "--into-destination", "nowhere", "--enqueue")
    assert code == 2 and "not configured" in error and "scratch" in error
    assert not Operation.objects.exists()
    refused = AuditEvent.objects.get(action="snapshot_restored")
    assert refused.outcome == "refused" and "nowhere" in refused.message


def test_restore_snapshot_into_destination_enqueue_prints_the_operation_and_a_worker_restores(
    rollback_env, operator, destination
):
    snap = take_verified_snapshot(rollback_env, operator)
    code, out, _ = run("restore_snapshot", str(snap.pk), "--into-destination", "scratch", "--enqueue", "--json")
    assert code == 0
    queued = json.loads(out)
    op = Operation.objects.get(pk=queued["operation"])
    assert (op.kind, op.state, op.params, op.snapshot_id) == ("restore", "queued", {"destination": "scratch"}, snap.pk)
    # One restore into a destination at a time: a second is refused while the first is queued.
    code, _, error = run("restore_snapshot", str(snap.pk), "--into-destination", "scratch", "--enqueue")
    assert code == 1 and f"already queued as operation #{op.pk}" in error
    assert run_queued_jobs() == 1
    op.refresh_from_db()
    assert op.state == "succeeded", op.error
    assert pg_query(destination.replace(f":{PASSWORD}", ""), "SELECT count(*) FROM customers") == [(3,)]
    code, out, _ = run("show_operation", str(op.pk), "--json")
    assert json.loads(out)["result"]["destination"] == "scratch" and PASSWORD not in out


def test_restore_snapshot_into_destination_runs_in_process_without_enqueue(rollback_env, operator, destination):
    snap = take_verified_snapshot(rollback_env, operator)
    code, out, _ = run("restore_snapshot", str(snap.pk), "--into-destination", "scratch", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["destination"] == "scratch" and result["heads"] == ["r3"] and PASSWORD not in out
    assert not Operation.objects.exists()


# ------------------------------------------------------------------ admin
def test_an_operator_restores_a_snapshot_through_its_confirmation_page(client, rollback_env, operator, destination):
    snap = take_verified_snapshot(rollback_env, operator)
    client.force_login(operator)
    snapshot_page = client.get(reverse("admin:opsapp_snapshot_change", args=[snap.pk])).content.decode()
    url = reverse("admin:opsapp_snapshot_restore", args=[snap.pk])
    assert url in snapshot_page
    page = html.unescape(client.get(url).content.decode())
    assert "Yes, restore snapshot" in page and "scratch" in page
    assert PASSWORD not in page and "postgres:***@" in page
    assert not Operation.objects.exists()  # a GET changes nothing
    response = client.post(url, {"destination": "scratch"})
    op = Operation.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "admin:opsapp_operation_change", args=[op.pk]
    )
    queued = AuditEvent.objects.get(action="restore_queued")
    assert queued.actor == operator.username and queued.snapshot_id == snap.pk
    run_queued_jobs()
    page = html.unescape(client.get(reverse("admin:opsapp_operation_change", args=[op.pk])).content.decode())
    assert "into destination scratch" in page and "restored into destination 'scratch'" in page
    assert "3 table(s), 6 row(s)" in page and PASSWORD not in page
    listed = client.get(reverse("admin:opsapp_operation_changelist") + "?kind__exact=restore").content.decode()
    assert f"/admin/opsapp/operation/{op.pk}/change/" in listed


def test_only_operators_may_restore_and_a_made_up_destination_is_refused(
    client, rollback_env, operator, auditor, destination
):
    snap = take_verified_snapshot(rollback_env, operator)
    url = reverse("admin:opsapp_snapshot_restore", args=[snap.pk])
    client.force_login(auditor)
    assert client.get(url).status_code == 403
    assert client.post(url, {"destination": "scratch"}).status_code == 403
    assert (
        "Restore into a destination"
        not in client.get(reverse("admin:opsapp_snapshot_change", args=[snap.pk])).content.decode()
    )
    client.force_login(operator)
    page = client.post(url, {"destination": "postgresql://elsewhere/db"}, follow=True).content.decode()
    assert "Choose one of the configured restore destinations" in page
    assert client.get(reverse("admin:opsapp_snapshot_restore", args=["nope"])).status_code == 404
    assert not Operation.objects.exists() and not AuditEvent.objects.filter(action="restore_queued").exists()


def test_an_operator_may_cancel_a_running_restore_or_sync_but_not_a_running_rehearsal(client, rollback_env, operator):
    from opsapp.models import OperationKind
    from opsapp.services.operations.queue import CannotCancel, cancel_operation, create_operation

    client.force_login(operator)
    for kind in (OperationKind.SYNC, OperationKind.RESTORE):
        op = create_operation(kind, rollback_env.name, actor=operator_actor(operator))
        Operation.objects.filter(pk=op.pk).update(state="running")
        page = client.get(reverse("admin:opsapp_operation_cancel", args=[op.pk])).content.decode()
        assert ("safe point" if kind == OperationKind.SYNC else "pg_restore is stopped") in page
        assert cancel_operation(op.pk, actor=operator_actor(operator)).cancel_requested_at is not None
    rehearsal = create_operation(OperationKind.REHEARSAL, rollback_env.name, actor=operator_actor(operator))
    Operation.objects.filter(pk=rehearsal.pk).update(state="running")
    with pytest.raises(CannotCancel):
        cancel_operation(rehearsal.pk, actor=operator_actor(operator))
