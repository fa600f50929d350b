"""otp_rekey [--check] [--json]: re-encrypt 2FA secrets under the current SECRET_KEY (after a rotation).

Rotation: set the new SECRET_KEY, move the old one into SECRET_KEY_FALLBACKS,
restart, run `otp_rekey`, then drop the fallback. Authenticator keys are
re-encrypted; backup codes are keyed hashes and cannot be, so the command
names the users whose codes still depend on a fallback (a reset gives them new
ones). Audited as "2FA secrets re-encrypted" (counts and user names only).

Exit 0 when every authenticator opens; 1 when some no configured key opens
(those users need `otp_reset`), or with --check when there is anything to do
(nothing is written or audited then).
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict

from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand
from opsapp.services import two_factor
from opsapp.services.actors import Actor


class Command(OpsCommand):
    help = "Re-encrypt every authenticator key under the current SECRET_KEY; report backup codes on old keys."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if there is work to do")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        report = two_factor.rekey(Actor.cli(getpass.getuser()), check=options["check"])
        if options["json"]:
            self.stdout.write(json.dumps(asdict(report)))
        elif options["verbosity"] >= 1:
            verb = "to re-encrypt" if options["check"] else "re-encrypted"
            self.stdout.write(f"Authenticators: {report.resealed} {verb}, {report.current} already current.")
            if report.backup_codes_on_old_key:
                self.stdout.write(
                    "Backup codes hashed under a SECRET_KEY_FALLBACKS key (they stop working when it is removed; "
                    "otp_reset gives new ones): " + ", ".join(report.backup_codes_on_old_key)
                )
            if report.backup_codes_unusable:
                self.stdout.write(
                    "Backup codes hashed under a key no longer configured (they no longer work): "
                    + ", ".join(report.backup_codes_unusable)
                )
        if report.unreadable:
            raise CommandError(
                f"{len(report.unreadable)} authenticator(s) open with no configured key (SECRET_KEY or "
                f"SECRET_KEY_FALLBACKS): {', '.join(report.unreadable)}. Run otp_reset for each; they enroll again."
            )
        if options["check"] and report.needs_attention:
            raise CommandError("2FA secrets are not all under the current SECRET_KEY; run otp_rekey.")
