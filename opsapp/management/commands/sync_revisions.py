"""sync_revisions [--target NAME] [--force] [--json]: sync the revision catalog of each target.

Re-reads a script directory only when its fingerprint changed (or --force),
reads each database's alembic_version, and records a "heads changed" audit
event when the heads moved since the last look. Exit 1 when a target is
unreachable or its script directory cannot be read; 2 on bad usage.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand
from opsapp.management.commands._catalog_cli import command_actor, target_names
from opsapp.management.commands._operations_cli import print_queued
from opsapp.models import OperationKind, TargetState
from opsapp.services.catalog.sync import sync_target
from opsapp.services.operations.queue import enqueue

PROBLEM_STATES = (TargetState.UNREACHABLE, TargetState.SCRIPT_ERROR)


class Command(OpsCommand):
    help = "Sync each target's revision catalog (incremental) and database state."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--target", metavar="NAME", help="only this target (default: all configured targets)")
        parser.add_argument("--force", action="store_true", help="re-read the script directory even if unchanged")
        parser.add_argument("--all", action="store_true", help="every configured target (the default without --target)")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")
        parser.add_argument(
            "--enqueue", action="store_true", help="queue one sync job per target and print the operation ids"
        )

    def handle(self, *args, **options) -> None:
        actor = command_actor()
        if options["all"] and options["target"]:
            raise CommandError("--all and --target exclude each other.", returncode=2)
        if options["enqueue"]:
            if options["force"]:
                raise CommandError("--force cannot be queued; run it in process.", returncode=2)
            # One job per target: workers on several hosts sync them in parallel.
            ops = [enqueue(OperationKind.SYNC, name, actor=actor) for name in target_names(options["target"])]
            print_queued(self, options, ops, single=bool(options["target"]))
            return
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
