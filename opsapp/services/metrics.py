"""The /metrics exposition: the console's state as Prometheus gauges, computed at each scrape.

Reads the console's own tables only (never a target database): the fleet
matrix (opsapp.services.fleet.matrix), open rollback requests, the latest
audit verification, the cron run records and the jobs queue (operations). Metric names are part of the
interface (docs/production.md has alert rules on them).
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from opsapp.models import ACTIVE_STATES, AuditOutcome, Operation, OperationKind, OperationState, RollbackRequest
from opsapp.models.rollback import OPEN_STATUSES
from opsapp.services.audit.verify import last_verification
from opsapp.services.cron.runs import cron_status
from opsapp.services.fleet.matrix import MATRIX_STATES, fleet_matrix

INF = float("inf")
CRON_STATES = ("ok", "running", "overdue", "failing", "never_run", "not_watched")


def fleet_metrics() -> Iterator[Metric]:
    matrix = fleet_matrix()
    state = GaugeMetricFamily(
        "ops_target_state",
        "1 for the target's state in the fleet matrix, 0 for the others.",
        labels=["target", "state"],
    )
    pending = GaugeMetricFamily(
        "ops_target_pending_revisions", "Revisions between the database and its heads.", labels=["target"]
    )
    snapshot_age = GaugeMetricFamily(
        "ops_target_snapshot_age_seconds",
        "Age of the target's latest verified snapshot (+Inf: none).",
        labels=["target"],
    )
    open_requests = GaugeMetricFamily(
        "ops_target_open_requests", "Open rollback requests of the target.", labels=["target"]
    )
    counts = GaugeMetricFamily("ops_targets", "Targets per fleet-matrix state.", labels=["state"])
    for row in matrix.rows:
        for column in MATRIX_STATES:
            state.add_metric([row.name, column], 1.0 if row.matrix_state == column else 0.0)
        pending.add_metric([row.name], float(row.behind))
        snapshot_age.add_metric([row.name], row.snapshot_age_seconds if row.snapshot_age_seconds is not None else INF)
        open_requests.add_metric([row.name], float(row.open_requests))
    for column, count in matrix.counts.items():
        counts.add_metric([column], float(count))
    yield from (state, pending, snapshot_age, open_requests, counts)


def request_metrics() -> Iterator[Metric]:
    by_status = dict(
        RollbackRequest.objects.filter(status__in=OPEN_STATUSES).values_list("status").annotate(n=Count("pk"))
    )
    gauge = GaugeMetricFamily("ops_rollback_requests_open", "Open rollback requests by status.", labels=["status"])
    for status in OPEN_STATUSES:
        gauge.add_metric([str(status)], float(by_status.get(status, 0)))
    yield gauge


def audit_metrics() -> Iterator[Metric]:
    event = last_verification()
    age = GaugeMetricFamily(
        "ops_audit_verify_age_seconds", "Seconds since the audit hash chain was last verified (+Inf: never)."
    )
    age.add_metric([], (timezone.now() - event.created_at).total_seconds() if event else INF)
    ok = GaugeMetricFamily(
        "ops_audit_verify_ok", "1 when the last verification found the chain intact, 0 when broken or never verified."
    )
    ok.add_metric([], 1.0 if event and event.outcome == AuditOutcome.SUCCESS else 0.0)
    yield from (age, ok)


def cron_metrics() -> Iterator[Metric]:
    jobs = cron_status()
    age = GaugeMetricFamily(
        "ops_cron_last_start_age_seconds", "Seconds since the job last started (+Inf: never).", labels=["job"]
    )
    interval = GaugeMetricFamily(
        "ops_cron_expected_interval_seconds", "Expected seconds between two runs (0: not watched).", labels=["job"]
    )
    exit_status = GaugeMetricFamily(
        "ops_cron_last_exit_status", "Exit status of the job's last finished run.", labels=["job"]
    )
    state = GaugeMetricFamily("ops_cron_job_state", "1 for the job's state, 0 for the others.", labels=["job", "state"])
    for job in jobs:
        age.add_metric([job.job], job.age_seconds if job.age_seconds is not None else INF)
        interval.add_metric([job.job], float(job.interval_seconds))
        if job.last_exit_status is not None:
            exit_status.add_metric([job.job], float(job.last_exit_status))
        for name in CRON_STATES:
            state.add_metric([job.job, name], 1.0 if job.state == name else 0.0)
    yield from (age, interval, exit_status, state)


def operations_metrics() -> Iterator[Metric]:
    """The jobs queue: operations queued and running by kind, and how long the oldest queued one has waited."""
    counts = {
        (kind, state): n
        for kind, state, n in Operation.objects.filter(state__in=ACTIVE_STATES)
        .values_list("kind", "state")
        .annotate(n=Count("pk"))
        .order_by()
    }
    gauge = GaugeMetricFamily(
        "ops_operations", "Operations queued or running, by kind and state.", labels=["kind", "state"]
    )
    for kind in OperationKind.values:
        for state in ACTIVE_STATES:
            gauge.add_metric([kind, str(state)], float(counts.get((kind, state), 0)))
    oldest = Operation.objects.filter(state=OperationState.QUEUED).aggregate(at=Min("queued_at"))["at"]
    age = GaugeMetricFamily(
        "ops_operations_queue_age_seconds",
        "Seconds the oldest queued operation has waited for a worker (0: none queued).",
    )
    age.add_metric([], max(0.0, (timezone.now() - oldest).total_seconds()) if oldest else 0.0)
    yield from (gauge, age)


# Each family source, in exposition order.
SOURCES = (fleet_metrics, request_metrics, audit_metrics, cron_metrics, operations_metrics)


class ConsoleCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        for source in SOURCES:
            yield from source()


def render_metrics() -> bytes:
    """The Prometheus text exposition of every console metric, computed now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ConsoleCollector())
    return generate_latest(registry)
