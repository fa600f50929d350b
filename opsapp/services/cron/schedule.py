"""The expected schedule of each cron job: a maximum interval between runs, from settings.

Why intervals, not cron expressions: "is it overdue?" needs only "how long
may pass between two runs", which an operator can state for any scheduler
(cron, systemd timers, Kubernetes CronJobs) without the console parsing its
syntax, and it needs no extra dependency. The defaults are the crontab of
docs/production.md; `OPS_CRON_INTERVALS` overrides them per job
(`sync_revisions=300,verify_snapshots=86400`), 0 stops watching a job.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass(frozen=True)
class CronJob:
    name: str  # the key in CronRun.command and OPS_CRON_INTERVALS
    label: str  # how to run it
    default_interval: int  # seconds, from docs/production.md's crontab


# docs/production.md, "5. cron" (keep the two in step).
JOBS: tuple[CronJob, ...] = (
    CronJob("sync_revisions", "sync_revisions", 5 * MINUTE),
    CronJob("check_drift", "check_drift", 15 * MINUTE),
    CronJob("take_snapshot", "take_snapshot", DAY),
    CronJob("verify_snapshots", "verify_snapshots", DAY),
    CronJob("prune_snapshots", "prune_snapshots", DAY),
    CronJob("verify_audit_log", "verify_audit_log", HOUR),
    CronJob("reconcile", "execute_rollback --reconcile", 10 * MINUTE),
    CronJob("reconcile_operations", "cancel_operation --reconcile", 10 * MINUTE),
    CronJob("reconcile_rehearsals", "rehearse_rollback --reconcile", 10 * MINUTE),
)
JOB_NAMES = tuple(job.name for job in JOBS)


def interval_problems(intervals: dict) -> list[str]:
    """What is wrong with an OPS_CRON_INTERVALS value (for opsapp.E087)."""
    problems = []
    for name, value in intervals.items():
        if name not in JOB_NAMES:
            problems.append(f"unknown job {name!r} (jobs: {', '.join(JOB_NAMES)})")
        elif not isinstance(value, int) or value < 0:
            problems.append(f"{name}={value!r}: give whole seconds, 0 to stop watching the job")
    return problems


def expected_interval(job: CronJob) -> int:
    """Seconds that may pass between two starts of `job` (0: not watched)."""
    configured = getattr(settings, "OPS_CRON_INTERVALS", {}) or {}
    value = configured.get(job.name, job.default_interval)
    return value if isinstance(value, int) and value >= 0 else job.default_interval


def grace_seconds() -> int:
    """Slack on top of the interval before a job counts as overdue (cron start jitter, a slow run)."""
    return max(0, int(getattr(settings, "OPS_CRON_GRACE_SECONDS", 120)))
