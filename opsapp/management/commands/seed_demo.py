"""Bring the demo target to its heads and fill it with sample rows.

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
    help = "Upgrade the demo target to its heads and fill it with sample accounts, orders and payments."

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
        if options["verbosity"] >= 1:
            self.stdout.write(f"Seeded target {result['target']!r} ({result['url']}) at {', '.join(result['heads'])}:")
            for table, count in result["counts"].items():
                self.stdout.write(f"  {table}: {count} rows ({result['inserted'][table]} new)")
