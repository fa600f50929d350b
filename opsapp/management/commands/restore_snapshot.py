"""restore_snapshot ID --into URL [--json]: restore a snapshot into a new, empty database and check it."""

from __future__ import annotations

import getpass
import json

from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError
from opsapp.services.snapshots.lifecycle import restore_snapshot

USAGE_REASONS = ("not_found", "wrong_kind", "bad_url")


class Command(OpsCommand):
    help = (
        "Restore snapshot ID into a NEW, EMPTY database (postgresql://... or sqlite:///new-file), then check that "
        "its alembic_version equals the snapshot's heads and report row counts. Never restores over a live target: "
        "see docs/restore.md for swapping the restored database in."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("snapshot_id", type=int, metavar="ID", help="the snapshot to restore")
        parser.add_argument("--into", required=True, metavar="URL", help="URL of the new, empty database")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        try:
            result = restore_snapshot(options["snapshot_id"], options["into"], actor=Actor.cli(getpass.getuser()))
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
