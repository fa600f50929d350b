"""export_audit_log --format csv|jsonl [--since DATE] [--until DATE] [--target NAME] [--output FILE].

Streams the events (oldest first, constant memory) with their hashes, so the
file verifies offline (docs/audit.md). Writes to stdout unless --output is
given. The export itself is recorded as an "audit log exported" event.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from django.core.management.base import CommandError
from django.db import DatabaseError

from opsapp.management.base import OpsCommand
from opsapp.services.actors import Actor
from opsapp.services.audit.export import FORMATS, filter_events, iter_export, parse_when, start_export
from opsapp.services.errors import OpsError


class Command(OpsCommand):
    help = "Export audit events as CSV or JSON Lines, with their hashes, for offline verification."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt", help="csv or jsonl")
        parser.add_argument("--since", metavar="DATE", help="from the start of this day (or ISO date-time), inclusive")
        parser.add_argument("--until", metavar="DATE", help="to the end of this day (or before this ISO date-time)")
        parser.add_argument("--target", metavar="NAME", help="only events of this target")
        parser.add_argument("--output", metavar="FILE", help="write here instead of stdout")

    def handle(self, *args, **options) -> None:
        fmt = options["fmt"]
        try:
            since = parse_when(options["since"]) if options["since"] else None
            until = parse_when(options["until"], end=True) if options["until"] else None
        except ValueError as exc:
            raise CommandError(f"bad date: {exc}", returncode=2) from exc
        if since and until and since >= until:
            raise CommandError("--since must be before --until.", returncode=2)
        filters = {
            "since": options["since"],
            "until": options["until"],
            "target": options["target"],
        }
        # --output is written under a temporary name and renamed when complete:
        # an auditor must never find a truncated export under the real name.
        output = Path(options["output"]) if options["output"] else None
        partial = output.with_name(f".{output.name}.partial") if output else None
        try:
            out = open(partial, "w", newline="", encoding="utf-8") if partial else None  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot write {options['output']}: {exc.strerror}", returncode=2) from exc
        done = False
        try:
            qs = start_export(
                filter_events(since, until, options["target"]),
                fmt=fmt,
                actor=Actor.cli(getpass.getuser()),
                filters=filters,
            )
            for chunk in iter_export(fmt, qs):
                if out is not None:
                    out.write(chunk)
                else:
                    self.stdout.write(chunk, ending="")
            if out is not None:
                out.flush()
                os.fsync(out.fileno())
                out.close()
                os.replace(partial, output)
            done = True
        except (OpsError, DatabaseError, OSError) as exc:
            raise CommandError(f"export failed: {exc}") from exc
        finally:
            if out is not None:
                out.close()
                if not done:
                    partial.unlink(missing_ok=True)
        if out is not None and options["verbosity"] >= 1:
            self.stderr.write(f"Wrote the {fmt} export to {options['output']}.")
