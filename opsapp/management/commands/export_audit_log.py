"""export_audit_log --format csv|jsonl [--since DATE] [--until DATE] [--target NAME] [--output FILE].

Streams the events (oldest first, constant memory) with their hashes, so the
file verifies offline (docs/audit.md). Writes to stdout unless --output is
given. The export itself is recorded as an "audit log exported" event.
"""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from opsapp.services.actors import Actor
from opsapp.services.audit_export import FORMATS, filter_events, iter_export, parse_when, start_export
from opsapp.services.errors import OpsError


class Command(BaseCommand):
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
        try:
            out = open(options["output"], "w", newline="", encoding="utf-8") if options["output"] else None  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot write {options['output']}: {exc.strerror}", returncode=2) from exc
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
        except (OpsError, DatabaseError) as exc:
            raise CommandError(f"export failed: {exc}") from exc
        finally:
            if out is not None:
                out.close()
        if out is not None and options["verbosity"] >= 1:
            self.stderr.write(f"Wrote the {fmt} export to {options['output']}.")
