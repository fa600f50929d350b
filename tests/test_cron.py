"""Missed-cron records: every cron command records its runs; check_cron, the dashboard and the audit banner judge them."""

from __future__ import annotations

import io
import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from opsapp.management.cron import CronRecorded
from opsapp.models import CronRun
from opsapp.services.cron.schedule import JOB_NAMES, JOBS

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _only_our_targets(settings, snapshot_dir):
    settings.OPS_TARGETS = {}
    settings.OPS_CRON_INTERVALS = {}
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@pytest.fixture
def linear(script_dir_factory, pg_url, configure_target) -> str:
    sd = script_dir_factory()
    sd.add("l1", None, message="one")
    sd.add("l2", "l1", message="two")
    return configure_target("linear", pg_url, sd.ini)


def run(name: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def runs_of(job: str) -> list[CronRun]:
    return list(CronRun.objects.filter(command=job).order_by("started_at"))


def all_jobs_ran_ok(ago: timedelta = timedelta(seconds=30)) -> None:
    started = timezone.now() - ago
    for job in JOB_NAMES:
        CronRun.objects.create(
            command=job, started_at=started, finished_at=started + timedelta(seconds=2), exit_status=0, host="h"
        )


@pytest.mark.parametrize(
    ("command", "args", "job"),
    [
        ("sync_revisions", (), "sync_revisions"),
        ("check_drift", (), "check_drift"),
        ("take_snapshot", (), "take_snapshot"),
        ("verify_snapshots", (), "verify_snapshots"),
        ("prune_snapshots", ("--keep", "3", "--older-than", "30"), "prune_snapshots"),
        ("verify_audit_log", (), "verify_audit_log"),
        ("execute_rollback", ("--reconcile",), "reconcile"),
    ],
)
def test_every_cron_command_records_its_run(linear, command, args, job):
    code, out = run(command, *args)
    [recorded] = runs_of(job)
    assert recorded.exit_status == code
    assert recorded.finished_at >= recorded.started_at
    assert recorded.duration_seconds == pytest.approx((recorded.finished_at - recorded.started_at).total_seconds())
    assert recorded.host == socket.gethostname()
    assert CronRun.objects.exclude(command=job).count() == 0


def test_executing_one_request_is_not_a_cron_run():
    code, _ = run("execute_rollback", "12345", "--code", "1")
    assert code == 2  # no such request (or no actor): bad usage
    assert CronRun.objects.count() == 0


def test_a_failing_run_records_its_exit_status_and_reason(configure_target, script_dir_factory):
    sd = script_dir_factory()
    sd.add("a1", None)
    configure_target("down", "postgresql://nobody:s3cret@127.0.0.1:1/none", sd.ini)
    code, _ = run("check_drift")
    assert code == 1
    [recorded] = runs_of("check_drift")
    assert recorded.exit_status == 1
    assert "drift found in: down" in recorded.detail
    code, _ = run("verify_audit_log", "--anchor", "nonsense")
    assert code == 2
    assert runs_of("verify_audit_log")[0].exit_status == 2


def test_an_exception_is_recorded_as_a_failure():
    class Boom(CronRecorded):
        cron_job = "sync_revisions"
        requires_system_checks = []

        def handle(self, *args, **options):
            raise RuntimeError("disk full at postgresql://u:s3cret@h/db")

    with pytest.raises(RuntimeError):
        call_command(Boom(), stdout=io.StringIO())
    [recorded] = runs_of("sync_revisions")
    assert recorded.exit_status == 1
    assert recorded.detail == "RuntimeError: disk full at postgresql://u:***@h/db"


def check_cron() -> tuple[int, dict]:
    code, out = run("check_cron", "--json")
    payload = out.split("\n")[0] if code else out
    return code, {job["job"]: job for job in json.loads(payload)}


def test_check_cron_exits_1_when_jobs_never_ran():
    code, jobs = check_cron()
    assert code == 1
    assert set(jobs) == set(JOB_NAMES)
    assert {job["state"] for job in jobs.values()} == {"never_run"}


def test_check_cron_exits_0_when_every_job_is_on_schedule():
    all_jobs_ran_ok()
    code, jobs = check_cron()
    assert code == 0, jobs
    assert {job["state"] for job in jobs.values()} == {"ok"}
    code, out = run("check_cron")
    assert code == 0 and "OK execute_rollback --reconcile" in out


def test_an_overdue_job_makes_check_cron_exit_1_and_shows_on_the_dashboard(client, admin_user):
    all_jobs_ran_ok()
    # sync_revisions is expected every 5 minutes (docs/production.md); its last run was 40 minutes ago.
    CronRun.objects.filter(command="sync_revisions").update(started_at=timezone.now() - timedelta(minutes=40))
    code, jobs = check_cron()
    assert code == 1
    assert jobs["sync_revisions"]["state"] == "overdue"
    assert "40 min ago" in jobs["sync_revisions"]["message"]
    assert [name for name, job in jobs.items() if job["problem"]] == ["sync_revisions"]
    code, out = run("check_cron")
    assert "PROBLEM sync_revisions: overdue." in out and "cron jobs need attention: sync_revisions" in out

    client.force_login(admin_user)
    html = client.get(reverse("admin:index")).content.decode()
    section = html.split('id="dashboard-cron"')[1].split("</div>")[0]
    assert "OVERDUE" in section and "sync_revisions" in section
    assert "check_drift" not in section  # on schedule: counted, not listed
    assert f"{len(JOBS) - 1} other cron jobs on schedule" in section


def test_a_failing_job_shows_until_it_succeeds(client, admin_user):
    all_jobs_ran_ok()
    run("check_cron")
    bad = CronRun.objects.get(command="verify_snapshots")
    bad.exit_status, bad.detail = 1, "snapshot #3: checksum mismatch"
    bad.save()
    code, jobs = check_cron()
    assert code == 1 and jobs["verify_snapshots"]["state"] == "failing"
    client.force_login(admin_user)
    html = client.get(reverse("admin:index")).content.decode()
    assert "FAILING" in html and "snapshot #3: checksum mismatch" in html
    CronRun.objects.create(
        command="verify_snapshots", started_at=timezone.now(), finished_at=timezone.now(), exit_status=0
    )
    assert check_cron()[0] == 0


def test_intervals_come_from_settings(settings):
    all_jobs_ran_ok(ago=timedelta(hours=2))
    settings.OPS_CRON_INTERVALS = {job.name: 0 for job in JOBS} | {"verify_audit_log": 4 * 3600}
    code, jobs = check_cron()
    assert code == 0
    assert jobs["verify_audit_log"]["state"] == "ok" and jobs["sync_revisions"]["state"] == "not_watched"
    settings.OPS_CRON_INTERVALS = {"verify_audit_log": 3600}
    assert check_cron()[1]["verify_audit_log"]["state"] == "overdue"


def test_a_bad_interval_setting_is_a_system_check_error(settings):
    settings.OPS_CRON_INTERVALS = {"sync_revision": 300, "check_drift": "5m"}
    errors = [e for e in run_checks() if e.id == "opsapp.E087"]
    assert len(errors) == 2
    assert "unknown job 'sync_revision'" in errors[0].msg and "check_drift='5m'" in errors[1].msg


def test_the_audit_banner_uses_the_cron_record(client, auditor):
    client.force_login(auditor)
    url = reverse("admin:opsapp_auditevent_changelist")
    assert "never been verified" in client.get(url).content.decode()

    assert run("verify_audit_log")[0] == 0
    html = client.get(url).content.decode()
    assert "never been verified" not in html and "Last verification of the hash chain" in html

    CronRun.objects.filter(command="verify_audit_log").update(started_at=timezone.now() - timedelta(hours=3))
    html = client.get(url).content.decode()
    assert "Verification is overdue" in html and "verify_audit_log last started 3.0 h ago" in html


@pytest.mark.django_db
def test_the_reconcile_jobs_of_the_production_crontab_are_watched_and_recorded():
    """docs/production.md's crontab runs three reconcile lines; each one's runs are recorded under its own job."""
    crontab = (Path(__file__).resolve().parent.parent / "docs" / "production.md").read_text()
    for line in ("execute_rollback --reconcile", "cancel_operation --reconcile", "rehearse_rollback --reconcile"):
        assert f"ops-manage {line}" in crontab
    assert {"reconcile", "reconcile_operations", "reconcile_rehearsals"} <= set(JOB_NAMES)

    call_command("cancel_operation", "--reconcile", stdout=io.StringIO())
    call_command("rehearse_rollback", "--reconcile", stdout=io.StringIO())

    recorded = set(CronRun.objects.values_list("command", flat=True))
    assert {"reconcile_operations", "reconcile_rehearsals"} <= recorded
