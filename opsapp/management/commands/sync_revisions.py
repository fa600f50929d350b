"""sync_revisions [--target NAME | --all] [--jobs N] [--force] [--enqueue] [--json]: sync the revision catalog of each target.

Re-reads a script directory only when its fingerprint changed (or --force),
reads each database's alembic_version, and records a "heads changed" audit
event when the heads moved since the last look. `--jobs N` syncs N targets
at once; a target that is down or slow is recorded unreachable after the
connect (OPS_CONNECT_TIMEOUT_SECONDS) or read (OPS_READ_TIMEOUT_SECONDS)
timeout without holding up the others. Exit 1 when a target is
unreachable or its script directory cannot be read; 2 on bad usage.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from opsapp.management.commands._catalog_cli import add_fleet_arguments, command_actor, jobs_option, target_names
from opsapp.management.commands._operations_cli import print_queued
from opsapp.management.cron import CronRecorded
from opsapp.models import OperationKind, TargetState
from opsapp.services.fleet.parallel import sync_targets
from opsapp.services.operations.queue import enqueue

PROBLEM_STATES = (TargetState.UNREACHABLE, TargetState.SCRIPT_ERROR)


class Command(CronRecorded):
    cron_job = "sync_revisions"
    help = "Sync each target's revision catalog (incremental) and database state."

    def add_arguments(self, parser) -> None:
        add_fleet_arguments(parser)
        parser.add_argument("--force", action="store_true", help="re-read the script directory even if unchanged")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")
        parser.add_argument(
            "--enqueue", action="store_true", help="queue one sync job per target and print the operation ids"
        )

    def handle(self, *args, **options) -> None:
        actor = command_actor()
        if options["enqueue"]:
            if options["force"]:
                raise CommandError("--force cannot be queued; run it in process.", returncode=2)
            # One job per target: workers on several hosts sync them in parallel.
            ops = [enqueue(OperationKind.SYNC, name, actor=actor) for name in target_names(options["target"])]
            print_queued(self, options, ops, single=bool(options["target"]))
            return
        jobs = jobs_option(options)
        results = sync_targets(target_names(options["target"]), actor=actor, force=options["force"], jobs=jobs)
        for target in results:
            if not options["json"] and options["verbosity"] >= 1:
                reread = "re-read" if target.catalog_reread else "unchanged"
                self.stdout.write(
                    f"{target.name}: {target.get_state_display()}; {target.revision_count} revisions ({reread}); "
                    f"database at {', '.join(target.current_heads) or '(empty)'}"
                )
                if target.state in PROBLEM_STATES:
                    self.stdout.write(target.state_detail)
        if options["json"]:
            payload = [
                {
                    "target": t.name,
                    "state": t.state,
                    "detail": t.state_detail,
                    "revision_count": t.revision_count,
                    "reread": t.catalog_reread,
                    "current": list(t.current_heads),
                    "heads": list(t.script_heads),
                    "pending_count": t.pending_count,
                    "sync_errors": t.sync_errors,
                }
                for t in results
            ]
            self.stdout.write(json.dumps(payload[0] if options["target"] else payload))
        failed = [t.name for t in results if t.state in PROBLEM_STATES]
        if failed:
            raise CommandError(f"sync incomplete for: {', '.join(failed)}")
