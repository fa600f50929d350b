"""verify_evidence FILE --public-key KEY [--checkpoints DIR]: check an evidence bundle or an export offline.

The same code an auditor runs without the console (opsapp/services/audit/offline.py):
exit 0 when intact, 1 naming each changed member or event, 2 on bad usage.
It reads no database.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

from django.core.management.base import BaseCommand, CommandError

from opsapp.services.audit import offline


class Command(BaseCommand):
    help = "Verify an evidence bundle (zip) or an audit export against the checkpoint public key, offline."
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", help="an evidence bundle (.zip) or an export (.jsonl / .csv)")
        parser.add_argument("--public-key", required=True, metavar="KEY", help="the checkpoint public key (PEM)")
        parser.add_argument("--checkpoints", metavar="DIR", help="the published checkpoint directory (exports)")

    def handle(self, *args, **options) -> None:
        argv = [options["file"], "--public-key", options["public_key"]]
        if options["checkpoints"]:
            argv += ["--checkpoints", options["checkpoints"]]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = offline.main(argv)
        self.stdout.write(out.getvalue(), ending="")
        self.stderr.write(err.getvalue(), ending="")
        if code:
            raise CommandError("the evidence does not verify" if code == 1 else "bad usage", returncode=code)
