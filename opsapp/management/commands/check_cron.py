"""check_cron [--json]: is every cron job running on schedule?

Exit 1 when a job is overdue (no start within its interval plus
OPS_CRON_GRACE_SECONDS), failing (its last run exited non-zero) or has never
run; 0 otherwise; 2 on bad usage. Expected intervals: OPS_CRON_INTERVALS,
defaulting to the crontab in docs/production.md. Run it from a scheduler
other than the cron it watches (or from monitoring), or scrape /metrics.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand
from opsapp.services.cron.runs import cron_status


class Command(OpsCommand):
    help = "Report cron jobs that are overdue, failing or never ran; exit 1 when there is one."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        jobs = cron_status()
        if options["json"]:
            self.stdout.write(json.dumps([job.as_dict() for job in jobs]))
        else:
            for job in jobs:
                if job.is_problem:
                    self.stdout.write(f"PROBLEM {job.label}: {job.state.replace('_', ' ')}. {job.message}")
                elif options["verbosity"] >= 1:
                    self.stdout.write(f"OK {job.label}: {job.message}")
        problems = [job.label for job in jobs if job.is_problem]
        if problems:
            raise CommandError(f"cron jobs need attention: {', '.join(problems)}")
