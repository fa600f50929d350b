"""CronRecorded: a management command whose every run is recorded as a CronRun.

Wraps `execute` (so system-check failures and bad usage count too): a row
when the run starts, completed with the exit status manage.py returns (0,
CommandError's returncode, 1 for any other exception) and the first line of
the error. The dashboard, /metrics and `check_cron` read these rows.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand
from opsapp.services.cron.runs import finish_run, start_run


class CronRecorded(OpsCommand):
    # The job's name in CronRun.command and OPS_CRON_INTERVALS (opsapp.services.cron.schedule.JOBS).
    cron_job = ""

    def cron_job_for(self, options: dict[str, Any]) -> str:
        """The job this run counts for ("" records nothing); override when an option selects the job."""
        return self.cron_job

    def execute(self, *args: Any, **options: Any) -> str | None:
        job = self.cron_job_for(options)
        if not job:
            return super().execute(*args, **options)
        run = start_run(job)
        try:
            result = super().execute(*args, **options)
        except CommandError as exc:
            finish_run(run, exc.returncode, str(exc))
            raise
        except BaseException as exc:
            finish_run(run, 1, f"{type(exc).__name__}: {exc}")
            raise
        finish_run(run, 0)
        return result
