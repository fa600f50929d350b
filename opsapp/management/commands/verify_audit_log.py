"""verify_audit_log [--json] [--print-head] [--anchor SEQ:HASH] [--no-checkpoint]: verify the audit chain.

Checks every signed checkpoint in OPS_AUDIT_CHECKPOINT_DIR, recomputes every
hash, MAC and link, checks the table against the checkpoints, then signs a new
checkpoint of the head (when this host has the signing key). Exit 0 when the
chain holds, 1 naming the first broken sequence number and what is wrong
(edited, missing, reordered, unkeyed, checkpoint), 2 on bad usage. The result
is itself recorded as an "audit log verified" event, which the admin's audit
list shows at the top. `--print-head` prints `SEQ HASH` of the newest event,
and nothing at all when the chain is broken.
"""

from __future__ import annotations

import getpass
import json
import re

from django.core.management.base import CommandError
from django.db import DatabaseError

from opsapp.management.cron import CronRecorded
from opsapp.services.actors import Actor
from opsapp.services.audit.verify import run_verification
from opsapp.services.errors import OpsError

ANCHOR = re.compile(r"^\s*#?(\d+)[:\s]+([0-9a-f]{64})\s*$")


class Command(CronRecorded):
    cron_job = "verify_audit_log"
    help = "Recompute the audit log's hash chain; exit 1 naming the first broken sequence number."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")
        parser.add_argument(
            "--print-head", action="store_true", help="print 'SEQ HASH' of the newest event (the anchor)"
        )
        parser.add_argument(
            "--anchor", metavar="SEQ:HASH", help="a head printed earlier by --print-head: it must still be in the chain"
        )
        parser.add_argument("--batch-size", type=int, default=5000, help="rows per query (default 5000)")
        parser.add_argument(
            "--no-checkpoint", action="store_true", help="check the existing checkpoints but do not write a new one"
        )

    def handle(self, *args, **options) -> None:
        anchor = None
        if options["anchor"]:
            match = ANCHOR.match(options["anchor"])
            if not match:
                raise CommandError("--anchor must look like SEQ:HASH (a 64-character hex SHA-256).", returncode=2)
            anchor = (int(match[1]), match[2])
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.", returncode=2)
        try:
            result = run_verification(
                actor=Actor.cli(getpass.getuser()),
                batch_size=options["batch_size"],
                anchor=anchor,
                checkpoint=not options["no_checkpoint"],
            )
        except (OpsError, DatabaseError) as exc:
            raise CommandError(f"could not verify the audit log: {exc}") from exc

        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        else:
            if options["print_head"] and result.ok and result.head_seq is not None:
                self.stdout.write(f"{result.head_seq} {result.head_hash}")
            # With --print-head stdout is exactly "SEQ HASH" (cron appends it to the anchor log).
            if result.ok and options["verbosity"] >= (2 if options["print_head"] else 1):
                self.stdout.write(self.style.SUCCESS(f"Audit log OK: {result.message}."))
        if not result.ok:
            where = f" at #{result.first_bad_seq}" if result.first_bad_seq else ""
            raise CommandError(f"audit log broken{where} ({result.problem}): {result.message}")
