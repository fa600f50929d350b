"""show_operation ID [--wait] [--json]: an operation's state, progress and result.

--wait follows it until it ends (printing progress on a terminal). Exit 0:
succeeded (or still queued/running without --wait); 1: failed, cancelled or
interrupted; 2: no such operation.
"""

from __future__ import annotations

import json
import time

from django.core.management.base import CommandError
from django.template.defaultfilters import filesizeformat

from opsapp.management.base import OpsCommand
from opsapp.models import ACTIVE_STATES, OperationState
from opsapp.services.operations.queue import OperationNotFound, get_operation, operation_summary


class Command(OpsCommand):
    help = "Show an operation (a queued or running job); --wait follows it to its end; --json prints it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("operation_id", type=int, metavar="ID")
        parser.add_argument("--wait", action="store_true", help="wait until the operation ends")
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        try:
            op = get_operation(options["operation_id"])
        except OperationNotFound as exc:
            raise CommandError(str(exc), returncode=2) from exc
        deadline = time.monotonic() + options["timeout"] if options["timeout"] else None
        last = None
        while options["wait"] and op.state in ACTIVE_STATES:
            if deadline is not None and time.monotonic() >= deadline:
                raise CommandError(f"Operation #{op.pk} is still {op.state} after {options['timeout']:g} s.")
            line = self._line(op)
            if line != last and not options["json"] and options["verbosity"] >= 1 and self.stderr.isatty():
                self.stderr.write(line)
                last = line
            time.sleep(0.5)
            op.refresh_from_db()
        if options["json"]:
            self.stdout.write(json.dumps(operation_summary(op)))
        elif options["verbosity"] >= 1:
            self.stdout.write(self._line(op))
            if op.error:
                self.stdout.write(op.error)
        if op.state in (OperationState.FAILED, OperationState.CANCELLED, OperationState.INTERRUPTED):
            raise CommandError(f"Operation #{op.pk} {op.state}: {op.error}")

    def _line(self, op) -> str:
        progress = ""
        if op.progress_total:
            done = op.progress_done or 0
            if op.progress_unit == "bytes":
                progress = f" {filesizeformat(done)} of {filesizeformat(op.progress_total)} ({op.percent}%)"
            else:
                progress = f" {done} of {op.progress_total} {op.progress_unit}"
        label = f"; {op.progress_label}" if op.progress_label else ""
        return f"Operation #{op.pk} ({op.kind} of {op.target.name}): {op.state}{progress}{label}"
