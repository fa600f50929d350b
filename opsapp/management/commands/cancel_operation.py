"""cancel_operation ID --actor USERNAME [--json]  |  cancel_operation --reconcile [--json]

Cancels a queued operation, stops a running snapshot (its file removed) or
aborts a running downgrade as a whole (rolled back); audited. --reconcile
marks running operations whose worker died as interrupted (and queues a
snapshot again). Exit 0 done; 1 refused (finished, or a running sync); 2 bad usage.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from opsapp.management.commands._rollback_cli import named_actor
from opsapp.management.cron import CronRecorded
from opsapp.services.actors import Actor
from opsapp.services.operations.queue import CannotCancel, OperationNotFound, cancel_operation, operation_summary
from opsapp.services.operations.reconcile import reconcile_operations


class Command(CronRecorded):
    help = "Cancel a queued or running operation, or --reconcile operations whose worker died."

    def cron_job_for(self, options) -> str:
        # Only the cron half is a scheduled job; acting on one operation or request is a person's act.
        return "reconcile_operations" if options.get("reconcile") else ""

    def add_arguments(self, parser) -> None:
        parser.add_argument("operation_id", nargs="?", type=int, metavar="ID")
        parser.add_argument("--actor", metavar="USERNAME", help="the console user cancelling")
        parser.add_argument("--reconcile", action="store_true", help="mark operations of dead workers interrupted")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        if options["reconcile"]:
            done = reconcile_operations(actor=Actor.cron())
            if options["json"]:
                self.stdout.write(json.dumps([operation_summary(op) for op in done]))
            elif options["verbosity"] >= 1:
                self.stdout.write("\n".join(f"Operation #{op.pk}: {op.error}" for op in done) or "Nothing to do.")
            return
        if options["operation_id"] is None:
            raise CommandError("Give an operation ID (or --reconcile).", returncode=2)
        actor = named_actor(options["actor"], permission="opsapp.cancel_operation", command="cancel_operation")
        try:
            op = cancel_operation(options["operation_id"], actor=actor)
        except OperationNotFound as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except CannotCancel as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(operation_summary(op)))
        elif options["verbosity"] >= 1:
            asked = "cancelled" if op.state == "cancelled" else "cancel requested; the worker stops it"
            self.stdout.write(f"Operation #{op.pk} ({op.kind} of {op.target.name}): {asked}.")
