"""export_evidence REQUEST_ID --output FILE: the evidence bundle (zip) of one rollback request.

The bundle verifies offline (`verify_evidence`, or opsapp/services/audit/offline.py
with only Python and `cryptography`). Exit 1 when there is no such request, it has
no audit events, or no signed checkpoint can cover them; 2 on bad usage.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path

from django.core.management.base import CommandError
from django.db import DatabaseError

from opsapp.management.base import OpsCommand
from opsapp.services.actors import Actor
from opsapp.services.audit.evidence import build_evidence
from opsapp.services.errors import OpsError


class Command(OpsCommand):
    help = "Write the evidence bundle (zip) of one rollback request, verifiable offline."

    def add_arguments(self, parser) -> None:
        parser.add_argument("request_id", type=int, help="the rollback request's id")
        parser.add_argument("--output", metavar="FILE", required=True, help="where to write the zip")

    def handle(self, *args, **options) -> None:
        output = Path(options["output"])
        if not output.parent.is_dir():
            raise CommandError(f"cannot write {output}: no such directory", returncode=2)
        try:
            _, data = build_evidence(options["request_id"], actor=Actor.cli(getpass.getuser()))
        except (OpsError, DatabaseError) as exc:
            raise CommandError(f"no evidence bundle: {exc}") from exc
        partial = output.with_name(f".{output.name}.partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, output)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise CommandError(f"cannot write {output}: {exc.strerror}") from exc
        if options["verbosity"] >= 1:
            self.stderr.write(f"Wrote the evidence bundle of request #{options['request_id']} to {output}.")
