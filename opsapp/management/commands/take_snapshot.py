"""take_snapshot [--target NAME] [--json] [--enqueue]: back up one target (or every target) and verify it.

--enqueue queues one snapshot job per target for a worker and prints the operation ids.
"""

from __future__ import annotations

import getpass
import json

from django.core.management.base import CommandError
from django.template.defaultfilters import filesizeformat

from opsapp.management.commands._operations_cli import print_queued
from opsapp.management.cron import CronRecorded
from opsapp.models import OperationKind, SnapshotStatus
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError, SnapshotError, TargetNotConfigured
from opsapp.services.operations.queue import enqueue
from opsapp.services.snapshots.lifecycle import take_snapshot
from opsapp.targets import configured_names


class Command(CronRecorded):
    cron_job = "take_snapshot"
    help = (
        "Take a full snapshot (pg_dump custom format / SQLite backup) of a target and verify it. "
        "Without --target, every configured target. --json prints {id, status, sha256, size, heads} "
        "(a list of those without --target). Exit 1 if any snapshot failed."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--target", metavar="NAME", help="the target to snapshot (default: all targets)")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="queue the snapshot for a worker and print the operation id instead of running it here",
        )

    def handle(self, *args, **options) -> None:
        as_json = options["json"]
        names = [options["target"]] if options["target"] else configured_names()
        actor = Actor.cli(getpass.getuser())
        if options["enqueue"]:
            try:
                ops = [enqueue(OperationKind.SNAPSHOT, name, actor=actor) for name in names]
            except TargetNotConfigured as exc:
                raise CommandError(str(exc), returncode=2) from exc
            print_queued(self, options, ops, single=bool(options["target"]))
            return
        results: list[dict] = []
        failures: list[str] = []
        for name in names:
            try:
                snap = take_snapshot(name, actor=actor, progress=self._progress(options))
            except TargetNotConfigured as exc:
                raise CommandError(str(exc), returncode=2) from exc
            except OpsError as exc:
                self._end_progress(options)
                failures.append(f"{name}: {exc}")
                snapshot_id = getattr(exc, "snapshot_id", None) if isinstance(exc, SnapshotError) else None
                results.append(
                    {
                        "target": name,
                        "id": snapshot_id,
                        "status": SnapshotStatus.FAILED.value,
                        "sha256": "",
                        "size": None,
                        "heads": [],
                        "error": str(exc),
                    }
                )
                continue
            self._end_progress(options)
            results.append(
                {
                    "target": name,
                    "id": snap.pk,
                    "status": snap.status,
                    "sha256": snap.sha256,
                    "size": snap.size,
                    "heads": snap.heads,
                }
            )
            if not as_json and options["verbosity"] >= 1:
                self.stdout.write(
                    f"Snapshot #{snap.pk} of {name}: {snap.status}, {filesizeformat(snap.size)}, "
                    f"heads {', '.join(snap.heads) or '(empty)'}, sha256 {snap.sha256}"
                )
        if as_json:
            self.stdout.write(json.dumps(results[0] if options["target"] else results))
        if failures:
            raise CommandError("Snapshot failed: " + "; ".join(failures))

    def _progress(self, options):
        if options["json"] or options["verbosity"] < 1 or not self.stderr.isatty():
            return None

        def show(size: int) -> None:
            self.stderr.write(f"\r  {filesizeformat(size)} written ", style_func=lambda s: s, ending="")
            self.stderr.flush()

        return show

    def _end_progress(self, options) -> None:
        if self._progress(options) is not None:
            self.stderr.write("", style_func=lambda s: s)
