"""prune_snapshots [--target NAME] --keep N --older-than DAYS [--json]: delete old snapshot files."""

from __future__ import annotations

import getpass
import json

from django.core.management.base import CommandError

from opsapp.management.cron import CronRecorded
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError, TargetNotConfigured
from opsapp.services.snapshots.lifecycle import prune_snapshots


class Command(CronRecorded):
    cron_job = "prune_snapshots"
    help = (
        "Delete old snapshot files and mark their rows pruned. Per target the N newest complete/verified "
        "snapshots stay, and so do the newest verified one and any attached to an open rollback request; "
        "of the rest, those older than DAYS go."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--target", metavar="NAME", help="only this target (default: all)")
        parser.add_argument("--keep", type=int, required=True, metavar="N", help="newest snapshots to keep per target")
        parser.add_argument(
            "--older-than",
            type=int,
            required=True,
            metavar="DAYS",
            dest="older_than",
            help="prune only snapshots older than this",
        )
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        if options["keep"] < 0 or options["older_than"] < 0:
            raise CommandError("--keep and --older-than must be zero or more.", returncode=2)
        try:
            pruned = prune_snapshots(
                actor=Actor.cli(getpass.getuser()),
                target_name=options["target"],
                keep=options["keep"],
                older_than_days=options["older_than"],
            )
        except TargetNotConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except OpsError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(
                json.dumps([{"id": s.pk, "target": s.target.name, "path": s.path, "status": s.status} for s in pruned])
            )
        elif options["verbosity"] >= 1:
            for snap in pruned:
                self.stdout.write(f"Pruned snapshot #{snap.pk} of {snap.target.name} ({snap.path or 'no file'}).")
            self.stdout.write(f"{len(pruned)} snapshot(s) pruned.")
