"""Create the demo target if it is new, and fill in its missing sample rows.

Never moves an existing database: one at a revision other than its heads is
left exactly as it is (a user's downgrade survives `make run`).
Idempotent: running it again inserts nothing new. Exit 0 when seeded,
1 when the target is unreachable or the upgrade fails, 2 for an unknown target.
"""

from __future__ import annotations

import json

from django.core.management.base import CommandError

from opsapp.demo.seed import seed_demo
from opsapp.management.base import OpsCommand
from opsapp.services.errors import OpsError, TargetNotConfigured


class Command(OpsCommand):
    help = (
        "Create the demo target (a new database is upgraded to its heads) and fill in missing sample rows; "
        "an existing database is never moved."
    )

    def add_arguments(self, parser):
        parser.add_argument("--target", default="shop", help="Target to seed (default: shop).")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON on stdout.")

    def handle(self, *args, **options):
        try:
            result = seed_demo(options["target"])
        except TargetNotConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except OpsError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(result, sort_keys=True))
            return
        if options["verbosity"] >= 1 and result["left_alone"]:
            self.stdout.write(
                f"Target {result['target']!r} ({result['url']}) is at {', '.join(result['heads'])}, not at its heads "
                f"{', '.join(result['script_heads'])}: left as it is (seed_demo never moves an existing database). "
                "Sample rows are filled in only at the heads."
            )
            return
        if options["verbosity"] >= 1:
            self.stdout.write(f"Seeded target {result['target']!r} ({result['url']}) at {', '.join(result['heads'])}:")
            for table, count in result["counts"].items():
                self.stdout.write(f"  {table}: {count} rows ({result['inserted'][table]} new)")
