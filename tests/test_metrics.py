"""/metrics: protected by a bearer token and/or an allow-list; scraped and parsed with prometheus_client's parser."""

from __future__ import annotations

import io
import math
from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from opsapp.models import RollbackRequest, RollbackStatus, Snapshot, SnapshotStatus, Target, TargetState

pytestmark = pytest.mark.django_db
TOKEN = "t" * 40


@pytest.fixture(autouse=True)
def _setup(settings):
    settings.OPS_TARGETS = {}
    settings.OPS_METRICS_TOKEN = ""
    settings.OPS_METRICS_ALLOWED_IPS = []
    settings.OPS_CLIENT_IP_HEADERS = ["REMOTE_ADDR"]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape, parsed by prometheus_client itself."""
    result = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


def scrape(client, **headers):
    return client.get("/metrics", **headers)


@pytest.fixture
def fleet():
    """Three targets in three states, a verified snapshot on one, open requests on two statuses."""
    now = timezone.now()
    behind = Target.objects.create(name="eu1", state=TargetState.BEHIND, pending_count=3, tags={"region": "eu"})
    Target.objects.create(name="us1", state=TargetState.AT_HEAD, current_heads=["a2"])
    Target.objects.create(name="down1", state=TargetState.UNREACHABLE)
    snap = Snapshot.objects.create(target=behind, status=SnapshotStatus.VERIFIED, format="pg_custom")
    Snapshot.objects.filter(pk=snap.pk).update(started_at=now - timedelta(hours=2))
    for status in (RollbackStatus.PENDING, RollbackStatus.PENDING, RollbackStatus.RUNNING, RollbackStatus.FAILED):
        RollbackRequest.objects.create(target=behind, status=status, reason="r", to_revision="a1")


def test_metrics_are_off_until_protected(client):
    assert scrape(client).status_code == 404


def test_a_token_is_required_when_set(client, settings):
    settings.OPS_METRICS_TOKEN = TOKEN
    assert scrape(client).status_code == 401
    response = scrape(client, HTTP_AUTHORIZATION="Bearer wrong")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.content.decode()
    assert scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_an_allow_list_refuses_other_addresses(client, settings):
    settings.OPS_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "192.0.2.7"]
    assert scrape(client, REMOTE_ADDR="127.0.0.1").status_code == 403
    assert scrape(client, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert scrape(client, REMOTE_ADDR="192.0.2.7").status_code == 200
    settings.OPS_METRICS_TOKEN = TOKEN  # both set: both must pass
    assert scrape(client, REMOTE_ADDR="10.1.2.3").status_code == 401
    assert scrape(client, REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_the_scrape_parses_and_holds_fleet_requests_audit_and_cron(client, settings, fleet):
    settings.OPS_METRICS_TOKEN = TOKEN
    call_command("verify_audit_log", stdout=io.StringIO())
    response = scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    got = samples(response.content.decode())

    assert got[("ops_target_state", (("state", "behind"), ("target", "eu1")))] == 1
    assert got[("ops_target_state", (("state", "at_head"), ("target", "eu1")))] == 0
    assert got[("ops_target_state", (("state", "unreachable"), ("target", "down1")))] == 1
    assert got[("ops_target_pending_revisions", (("target", "eu1"),))] == 3
    assert got[("ops_targets", (("state", "at_head"),))] == 1
    assert got[("ops_targets", (("state", "multiple_heads"),))] == 0
    age = got[("ops_target_snapshot_age_seconds", (("target", "eu1"),))]
    assert 7200 <= age < 7200 + 600
    assert math.isinf(got[("ops_target_snapshot_age_seconds", (("target", "us1"),))])
    assert got[("ops_target_open_requests", (("target", "eu1"),))] == 3
    assert got[("ops_rollback_requests_open", (("status", "pending"),))] == 2
    assert got[("ops_rollback_requests_open", (("status", "running"),))] == 1
    assert got[("ops_audit_verify_ok", ())] == 1
    assert 0 <= got[("ops_audit_verify_age_seconds", ())] < 600
    assert 0 <= got[("ops_cron_last_start_age_seconds", (("job", "verify_audit_log"),))] < 600
    assert got[("ops_cron_last_exit_status", (("job", "verify_audit_log"),))] == 0
    assert math.isinf(got[("ops_cron_last_start_age_seconds", (("job", "sync_revisions"),))])
    assert got[("ops_cron_job_state", (("job", "sync_revisions"), ("state", "never_run")))] == 1
    assert got[("ops_cron_expected_interval_seconds", (("job", "sync_revisions"),))] == 300


def test_the_scrape_counts_queued_and_running_operations_by_kind_and_the_oldest_queued_ones_age(
    client, settings, fleet
):
    from opsapp.models import Operation, OperationKind, OperationState

    settings.OPS_METRICS_TOKEN = TOKEN
    target = Target.objects.get(name="eu1")
    now = timezone.now()

    def operation(kind: str, state: str, queued_minutes_ago: float) -> None:
        op = Operation.objects.create(kind=kind, state=state, target=target)
        Operation.objects.filter(pk=op.pk).update(queued_at=now - timedelta(minutes=queued_minutes_ago))

    operation(OperationKind.SNAPSHOT, OperationState.QUEUED, 7)
    operation(OperationKind.SNAPSHOT, OperationState.QUEUED, 1)
    operation(OperationKind.REHEARSAL, OperationState.QUEUED, 3)
    operation(OperationKind.REHEARSAL, OperationState.RUNNING, 60)  # running: not in the queue's age
    operation(OperationKind.DOWNGRADE, OperationState.SUCCEEDED, 120)  # finished: not counted
    operation(OperationKind.SYNC, OperationState.FAILED, 1)

    got = samples(scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())

    assert got[("ops_operations", (("kind", "snapshot"), ("state", "queued")))] == 2
    assert got[("ops_operations", (("kind", "snapshot"), ("state", "running")))] == 0
    assert got[("ops_operations", (("kind", "rehearsal"), ("state", "queued")))] == 1
    assert got[("ops_operations", (("kind", "rehearsal"), ("state", "running")))] == 1
    assert got[("ops_operations", (("kind", "downgrade"), ("state", "queued")))] == 0
    assert got[("ops_operations", (("kind", "sync"), ("state", "running")))] == 0
    assert not any(name == "ops_operations" and dict(labels)["state"] == "succeeded" for name, labels in got)
    assert 7 * 60 <= got[("ops_operations_queue_age_seconds", ())] < 7 * 60 + 600


def test_an_empty_queue_has_age_zero(client, settings):
    settings.OPS_METRICS_TOKEN = TOKEN
    got = samples(scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())
    assert got[("ops_operations_queue_age_seconds", ())] == 0
    assert got[("ops_operations", (("kind", "downgrade"), ("state", "running")))] == 0


def test_never_verified_audit_log_reads_as_infinitely_old(client, settings):
    settings.OPS_METRICS_TOKEN = TOKEN
    got = samples(scrape(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())
    assert math.isinf(got[("ops_audit_verify_age_seconds", ())]) and got[("ops_audit_verify_ok", ())] == 0


def test_bad_metrics_settings_are_system_check_errors(settings):
    settings.OPS_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "office"]
    settings.OPS_METRICS_TOKEN = "short"
    errors = {e.id: e.msg for e in run_checks() if e.id in ("opsapp.E088", "opsapp.E089")}
    assert "'office' is not an IP address" in errors["opsapp.E088"]
    assert "5 characters" in errors["opsapp.E089"] and "short" not in errors["opsapp.E089"].replace("a short", "")
