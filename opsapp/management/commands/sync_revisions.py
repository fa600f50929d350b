"""sync_revisions [--target NAME] [--force] [--json]: sync the revision catalog of each target.

Re-reads a script directory only when its fingerprint changed (or --force),
reads each database's alembic_version, and records a "heads changed" audit
event when the heads moved since the last look. Exit 1 when a target is
unreachable or its script directory cannot be read; 2 on bad usage.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from opsapp.management.commands._catalog_cli import command_actor, target_names
from opsapp.management.cron import CronRecorded
from opsapp.models import TargetState
from opsapp.services.catalog.sync import sync_target

PROBLEM_STATES = (TargetState.UNREACHABLE, TargetState.SCRIPT_ERROR)


class Command(CronRecorded):
    cron_job = "sync_revisions"
    help = "Sync each target's revision catalog (incremental) and database state."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--target", metavar="NAME", help="only this target (default: all configured targets)")
        parser.add_argument("--force", action="store_true", help="re-read the script directory even if unchanged")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        actor = command_actor()
        results = []
        for name in target_names(options["target"]):
            target = sync_target(name, actor=actor, force=options["force"])
            results.append(target)
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
