"""check_drift [--target NAME | --all] [--jobs N] [--json] [--require-head] [--single-head]: is each database where it should be?

Exit 1 when a database holds a revision the scripts do not know, is
unreachable, or its script directory cannot be read; with --require-head also
when it is not at every head; with --single-head also when the scripts have
more than one head. Otherwise 0; 2 on bad usage. Cron mails the output, so
each problem says what is wrong and what to do. `--json` adds each target's
row of the fleet matrix (matrix_state: at_head, behind, unknown,
multiple_heads, unreachable; behind N; tags; snapshot age; open requests),
the admin index's view, for monitoring.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from opsapp.management.commands._catalog_cli import add_fleet_arguments, command_actor, jobs_option, target_names
from opsapp.management.cron import CronRecorded
from opsapp.services.catalog.drift import drift_problems
from opsapp.services.fleet.matrix import fleet_matrix
from opsapp.services.fleet.parallel import sync_targets

MATRIX_KEYS = ("matrix_state", "matrix_label", "behind", "tags", "snapshot_id", "snapshot_age_seconds", "open_requests")


class Command(CronRecorded):
    cron_job = "check_drift"
    help = "Check each target for drift between its database and its scripts; exit 1 on a problem."

    def add_arguments(self, parser) -> None:
        add_fleet_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")
        parser.add_argument(
            "--require-head", action="store_true", help="also fail when a database is not at every head"
        )
        parser.add_argument(
            "--single-head", action="store_true", help="also fail when the scripts have more than one head"
        )

    def handle(self, *args, **options) -> None:
        actor = command_actor()
        reports = []
        for target in sync_targets(target_names(options["target"]), actor=actor, jobs=jobs_option(options)):
            problems = drift_problems(target, require_head=options["require_head"], single_head=options["single_head"])
            reports.append(
                {
                    "target": target.name,
                    "state": target.state,
                    "ok": not problems,
                    "current": list(target.current_heads),
                    "heads": list(target.script_heads),
                    "pending_count": target.pending_count,
                    "problems": [{"code": p.code, "message": p.message} for p in problems],
                }
            )
            if options["json"]:
                continue
            if problems:
                self.stdout.write(f"PROBLEM {target.name}: {target.get_state_display()}")
                for problem in problems:
                    self.stdout.write(problem.message + "\n")
            elif options["verbosity"] >= 1:
                self.stdout.write(
                    f"OK {target.name}: {target.get_state_display()}, database at {', '.join(target.current_heads) or '(empty)'}"
                )
        if options["json"]:
            # The fleet matrix's columns too (the admin index's view, for monitoring).
            matrix = {row.name: row for row in fleet_matrix(names=[r["target"] for r in reports]).rows}
            for report in reports:
                row = matrix[report["target"]]
                report.update({key: row.as_dict()[key] for key in MATRIX_KEYS})
            self.stdout.write(json.dumps(reports[0] if options["target"] else reports))
        failing = [r["target"] for r in reports if not r["ok"]]
        if failing:
            raise CommandError(f"drift found in: {', '.join(failing)}")
