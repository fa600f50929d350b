"""verify_snapshots [--target NAME] [--json]: re-check every complete or verified snapshot (for cron)."""

from __future__ import annotations

import getpass
import json

from django.core.management.base import CommandError

from opsapp.management.cron import CronRecorded
from opsapp.models import SnapshotStatus, Target
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError, TargetMisconfigured, TargetNotConfigured
from opsapp.services.snapshots.lifecycle import snapshots_to_verify, verify_snapshot
from opsapp.targets import get_target


class Command(CronRecorded):
    cron_job = "verify_snapshots"
    help = (
        "Verify snapshots: the file exists, its SHA-256 still matches, and the archive reads back "
        "(pg_restore --list / PRAGMA integrity_check). Exit 1 if any snapshot checked failed."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--target", metavar="NAME", help="only this target's snapshots (default: all)")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        name = options["target"]
        if name and not Target.objects.filter(name=name).exists():
            try:
                get_target(name)
            except TargetNotConfigured as exc:
                raise CommandError(str(exc), returncode=2) from exc
            except TargetMisconfigured:
                pass
        actor = Actor.cli(getpass.getuser())
        results: list[dict] = []
        failed: list[str] = []
        for snap in snapshots_to_verify(name):
            try:
                snap = verify_snapshot(snap, actor=actor)
            except OpsError as exc:  # pruned or changed meanwhile: nothing to check any more
                results.append({"id": snap.pk, "target": snap.target.name, "status": snap.status, "error": str(exc)})
                continue
            results.append({"id": snap.pk, "target": snap.target.name, "status": snap.status, "error": snap.error})
            if snap.status == SnapshotStatus.FAILED:
                failed.append(f"#{snap.pk} ({snap.target.name}): {snap.error}")
            if not options["json"] and options["verbosity"] >= 1:
                line = f"Snapshot #{snap.pk} of {snap.target.name}: {snap.status}"
                self.stdout.write(line + (f" - {snap.error}" if snap.error else ""))
        if options["json"]:
            self.stdout.write(json.dumps(results))
        elif options["verbosity"] >= 1 and not results:
            self.stdout.write("No snapshots to verify.")
        if failed:
            raise CommandError(f"{len(failed)} snapshot(s) failed verification: " + "; ".join(failed))
