"""restore_snapshot ID (--into URL | --into-destination NAME [--enqueue]) [--json]

Restore a snapshot into a new, empty database and check it. `--into URL`
runs here, in this process. `--into-destination NAME` names a restore
destination (OPS_RESTORE_DESTINATIONS; its URL stays in the environment);
with `--enqueue` a worker runs it and the command prints the operation id.
A URL may hold a password, so `--into` is never queued.
"""

from __future__ import annotations

import getpass
import json

from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand
from opsapp.management.commands._operations_cli import print_queued
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError

USAGE_REASONS = ("not_found", "wrong_kind", "bad_url", "no_destination")


class Command(OpsCommand):
    help = (
        "Restore snapshot ID into a NEW, EMPTY database (postgresql://... or sqlite:///new-file), then check that "
        "its alembic_version equals the snapshot's heads and report row counts. Never restores over a live target: "
        "see docs/restore.md for swapping the restored database in. --into-destination NAME --enqueue queues it "
        "for a worker (the queue holds the destination's name, never its URL)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("snapshot_id", type=int, metavar="ID", help="the snapshot to restore")
        into = parser.add_mutually_exclusive_group(required=True)
        into.add_argument("--into", metavar="URL", help="URL of the new, empty database (runs in this process)")
        into.add_argument(
            "--into-destination",
            metavar="NAME",
            help="a restore destination from OPS_RESTORE_DESTINATIONS (its URL is read from the environment)",
        )
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="with --into-destination: queue the restore for a worker and print the operation id",
        )
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        actor = Actor.cli(getpass.getuser())
        destination = options["into_destination"]
        if options["enqueue"]:
            if not destination:
                raise CommandError(
                    "--enqueue needs --into-destination NAME: a URL may hold a password, and nothing secret enters "
                    "the queue. Declare the database in OPS_RESTORE_DESTINATIONS (docs/restore.md).",
                    returncode=2,
                )
            self._enqueue(options, destination, actor)
            return
        try:
            if destination:
                from opsapp.services.snapshots.restore import restore_to_destination

                result = restore_to_destination(options["snapshot_id"], destination, actor=actor)
            else:
                from opsapp.services.snapshots.restore import restore_snapshot

                result = restore_snapshot(options["snapshot_id"], options["into"], actor=actor)
        except OpsError as exc:
            raise CommandError(str(exc), returncode=2 if exc.reason in USAGE_REASONS else 1) from exc
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        if options["verbosity"] >= 1:
            self.stdout.write(
                f"Restored snapshot #{result['snapshot']} into {result['into']}; "
                f"alembic_version {', '.join(result['heads']) or '(empty)'} matches the snapshot."
            )
            for table, count in sorted(result["row_counts"].items()):
                self.stdout.write(f"  {table}: {count} row(s)")

    def _enqueue(self, options: dict, destination: str, actor: Actor) -> None:
        from opsapp.services.operations.queue import enqueue_restore

        try:
            op = enqueue_restore(options["snapshot_id"], destination, actor=actor)
        except OpsError as exc:
            raise CommandError(str(exc), returncode=2 if exc.reason in USAGE_REASONS else 1) from exc
        print_queued(self, options, [op], single=True)
