"""Record cron runs and judge each job: ok, running, overdue, failing or never run.

`start_run` / `finish_run` are called by `opsapp.management.cron.CronRecorded`
around a command's `execute`. Recording never stops the command: if the
console's database cannot take the row, the run goes unrecorded with a log
line (the job then looks overdue, which is the right alarm).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime

from django.db import DatabaseError
from django.db.models import Max, Q
from django.utils import timezone

from opsapp.models import CronRun
from opsapp.services.cron.schedule import JOBS, CronJob, expected_interval, grace_seconds
from opsapp.targets import mask_url

log = logging.getLogger(__name__)

OK = "ok"
RUNNING = "running"
OVERDUE = "overdue"
FAILING = "failing"
NEVER_RUN = "never_run"
NOT_WATCHED = "not_watched"
PROBLEM_STATES = (OVERDUE, FAILING, NEVER_RUN)


def start_run(job: str) -> CronRun | None:
    """Insert the row of a run that starts now (None when it cannot be written)."""
    try:
        return CronRun.objects.create(
            command=job, started_at=timezone.now(), host=socket.gethostname()[:255], pid=os.getpid()
        )
    except DatabaseError as exc:
        log.warning("cron run of %s not recorded: %s", job, mask_url(str(exc)))
        return None


def finish_run(run: CronRun | None, exit_status: int, detail: str = "") -> None:
    """Complete `run` with its exit status and duration (no-op for an unrecorded run)."""
    if run is None:
        return
    run.finished_at = timezone.now()
    run.exit_status = exit_status
    run.duration_seconds = (run.finished_at - run.started_at).total_seconds()
    run.detail = mask_url(detail.strip().splitlines()[0] if detail.strip() else "")[:2000]
    try:
        run.save(update_fields=["finished_at", "exit_status", "duration_seconds", "detail"])
    except DatabaseError as exc:
        log.warning("end of cron run %s not recorded: %s", run.pk, mask_url(str(exc)))


@dataclass(frozen=True)
class JobStatus:
    job: str
    label: str
    state: str
    message: str
    interval_seconds: int
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_exit_status: int | None
    last_duration_seconds: float | None
    last_host: str
    last_detail: str
    # Seconds since the last start (None: never ran): the metric `ops_cron_last_start_age_seconds`.
    age_seconds: float | None

    @property
    def state_label(self) -> str:
        return self.state.replace("_", " ")

    @property
    def is_problem(self) -> bool:
        return self.state in PROBLEM_STATES

    def as_dict(self) -> dict:
        data = asdict(self)
        for key in ("last_started_at", "last_finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["problem"] = self.is_problem
        return data


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def judge(job: CronJob, latest: CronRun | None, latest_finished: CronRun | None, now: datetime) -> JobStatus:
    """The state of `job` from its latest run and its latest finished run."""
    interval = expected_interval(job)
    age = (now - latest.started_at).total_seconds() if latest else None
    every = f"expected every {_ago(interval)}"
    if interval == 0:
        state, message = NOT_WATCHED, "not watched (OPS_CRON_INTERVALS sets 0)"
    elif latest is None:
        state, message = NEVER_RUN, f"{job.label} has never run ({every}): is it in the crontab?"
    elif age > interval + grace_seconds():
        running = " and has not finished" if latest.finished_at is None else ""
        state, message = OVERDUE, f"{job.label} last started {_ago(age)} ago{running}, {every}."
    elif latest.finished_at is None:
        state, message = RUNNING, f"{job.label} started {_ago(age)} ago and is running."
    elif latest_finished is not None and latest_finished.exit_status != 0:
        state = FAILING
        message = f"{job.label} last exited with status {latest_finished.exit_status}: {latest_finished.detail}"
    else:
        state, message = OK, f"{job.label} ran {_ago(age)} ago ({every})."
    if state == RUNNING and latest_finished is not None and latest_finished.exit_status != 0:
        state = FAILING
        message = f"{job.label} last exited with status {latest_finished.exit_status}: {latest_finished.detail}"
    shown = latest_finished or latest
    return JobStatus(
        job=job.name,
        label=job.label,
        state=state,
        message=message,
        interval_seconds=interval,
        last_started_at=latest.started_at if latest else None,
        last_finished_at=latest_finished.finished_at if latest_finished else None,
        last_exit_status=latest_finished.exit_status if latest_finished else None,
        last_duration_seconds=latest_finished.duration_seconds if latest_finished else None,
        last_host=shown.host if shown else "",
        last_detail=latest_finished.detail if latest_finished else "",
        age_seconds=age,
    )


def _latest_runs(names: list[str]) -> tuple[dict[str, CronRun], dict[str, CronRun]]:
    """The latest run and the latest finished run of each job, in three indexed queries whatever the history."""
    latest = dict(
        CronRun.objects.filter(command__in=names)
        .values("command")
        .annotate(at=Max("started_at"))
        .values_list("command", "at")
    )
    finished = dict(
        CronRun.objects.filter(command__in=names, finished_at__isnull=False)
        .values("command")
        .annotate(at=Max("started_at"))
        .values_list("command", "at")
    )
    wanted = Q(pk__in=[])
    for command, at in [*latest.items(), *finished.items()]:
        wanted |= Q(command=command, started_at=at)
    runs = list(CronRun.objects.filter(wanted).order_by("pk")) if latest else []
    by_latest = {run.command: run for run in runs if run.started_at == latest.get(run.command)}
    by_finished = {
        run.command: run for run in runs if run.finished_at is not None and run.started_at == finished.get(run.command)
    }
    return by_latest, by_finished


def cron_status(now: datetime | None = None) -> list[JobStatus]:
    """The state of every known cron job, in JOBS order."""
    now = now or timezone.now()
    latest, finished = _latest_runs([job.name for job in JOBS])
    return [judge(job, latest.get(job.name), finished.get(job.name), now) for job in JOBS]


def job_status(name: str, now: datetime | None = None) -> JobStatus:
    """cron_status() of one job. Raises KeyError for an unknown job."""
    job = {j.name: j for j in JOBS}[name]
    latest, finished = _latest_runs([name])
    return judge(job, latest.get(name), finished.get(name), now or timezone.now())
