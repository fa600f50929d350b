"""rehearse_rollback ID --actor USERNAME [--round-trip] [--json] [--enqueue]  |  rehearse_rollback --reconcile [--json]

Restores the request's attached snapshot into a scratch copy, runs the stored
plan there in one transaction, records what it measured (success or the
failing revision, statement and SQLSTATE; durations; rows and values
destroyed; the schema after) and drops the copy. `--round-trip` then upgrades
the copy back and reports migrations whose down/up does not restore the
schema and data that does not come back. Progress goes to stderr with -v 1+.

Exit 0: the rehearsal succeeded (and the round trip, if asked, found nothing);
1: it failed, was refused or is unavailable; 2: bad usage.
--enqueue queues the rehearsal for a worker instead and prints the operation
id ({"operation": id, ...} with --json); follow it with show_operation ID --wait.
--reconcile drops scratch copies left by a killed rehearsal and marks its
record interrupted; exit 0.
--json prints services/rehearsal/document.rehearsal_document: the same keys as
a rehearsal in an evidence bundle's rehearsals.json (which adds `operation`
and `audit_events`).
"""

from __future__ import annotations

from django.core.management.base import CommandError

from opsapp.management.commands._operations_cli import print_queued
from opsapp.management.commands._rollback_cli import emit, named_actor
from opsapp.management.cron import CronRecorded
from opsapp.models import RollbackRequest
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError, TargetNotConfigured
from opsapp.services.operations.queue import enqueue_rehearsal
from opsapp.services.rehearsal.document import rehearsal_document
from opsapp.services.rehearsal.run import reconcile, run_rehearsal
from opsapp.services.rehearsal.summary import result_line

PERMISSION = "opsapp.change_rollbackrequest"


class Command(CronRecorded):
    help = (
        "Rehearse a rollback request's downgrade on a scratch copy restored from its snapshot, or --reconcile "
        "scratch copies left by a rehearsal that died."
    )

    def cron_job_for(self, options) -> str:
        # Only the cron half is a scheduled job; acting on one operation or request is a person's act.
        return "reconcile_rehearsals" if options.get("reconcile") else ""

    def add_arguments(self, parser) -> None:
        parser.add_argument("request_id", nargs="?", type=int, metavar="ID", help="the rollback request to rehearse")
        parser.add_argument("--actor", metavar="USERNAME", help="the console user rehearsing (an operator)")
        parser.add_argument("--round-trip", action="store_true", help="upgrade the copy back and compare")
        parser.add_argument("--reconcile", action="store_true", help="drop scratch copies of dead rehearsals")
        parser.add_argument("--enqueue", action="store_true", help="queue it for a worker; print the operation id")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        if options["reconcile"]:
            if options["request_id"] is not None or options["round_trip"] or options["enqueue"]:
                raise CommandError("--reconcile takes no request ID, no --round-trip and no --enqueue.", returncode=2)
            return self._reconcile(options)
        request_id = options["request_id"]
        if request_id is None:
            raise CommandError("Give a request ID (or --reconcile).", returncode=2)
        actor = named_actor(options["actor"], permission=PERMISSION, command="rehearse_rollback")
        if not RollbackRequest.objects.filter(pk=request_id).exists():
            raise CommandError(f"Rollback request #{request_id} does not exist.", returncode=2)
        if options["enqueue"]:
            return self._enqueue(request_id, actor, options)

        def progress(text: str) -> None:
            if options["verbosity"] >= 1:
                self.stderr.write(f"rehearsal of request #{request_id}: {text}")

        try:
            rehearsal = run_rehearsal(request_id, actor=actor, round_trip=options["round_trip"], progress=progress)
        except TargetNotConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except OpsError as exc:
            emit(self, options, {"id": None, "request": request_id, "status": "refused", "message": str(exc)}, "")
            raise CommandError(f"Rehearsal refused: {exc}") from exc
        line = f"Request #{request_id}: {result_line(rehearsal)}."
        emit(self, options, rehearsal_document(rehearsal), line)
        if rehearsal.status != "succeeded":
            raise CommandError(f"Rehearsal #{rehearsal.pk} failed.")
        if rehearsal.round_trip and not (rehearsal.round_trip_report or {}).get("ok"):
            raise CommandError(f"Rehearsal #{rehearsal.pk}: the round trip found problems.")

    def _enqueue(self, request_id: int, actor: Actor, options) -> None:
        try:
            op = enqueue_rehearsal(request_id, actor=actor, round_trip=options["round_trip"])
        except TargetNotConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except OpsError as exc:
            raise CommandError(f"Rehearsal not queued: {exc}") from exc
        print_queued(self, options, [op], single=True)

    def _reconcile(self, options) -> None:
        actor = (
            named_actor(options["actor"], permission=PERMISSION, command="rehearse_rollback")
            if options["actor"]
            else Actor.cron()
        )
        dropped, interrupted = reconcile(actor=actor)
        payload = {"dropped": dropped, "interrupted": [r.pk for r in interrupted]}
        human = (
            "\n".join([f"Dropped scratch copy {name}." for name in dropped] + [r.error for r in interrupted])
            or "No leftover scratch copy found."
        )
        emit(self, options, payload, human)
