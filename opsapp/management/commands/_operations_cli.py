"""Shared bits of the commands' `--enqueue`: print the queued operations."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from opsapp.models import Operation


def print_queued(command: BaseCommand, options: dict, ops: list[Operation], *, single: bool) -> None:
    """--json: {"operation": id, ...} (a list of those without --target); else one line per operation."""
    payload = [{"operation": op.pk, "kind": op.kind, "target": op.target.name, "state": op.state} for op in ops]
    if options["json"]:
        command.stdout.write(json.dumps(payload[0] if single and payload else payload))
    elif options["verbosity"] >= 1:
        for op in ops:
            command.stdout.write(
                f"Queued operation #{op.pk} ({op.kind} of {op.target.name}); follow it with "
                f"`manage.py show_operation {op.pk} --wait`."
            )
