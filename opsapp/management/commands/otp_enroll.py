"""otp_enroll USER [--json]: give USER an authenticator without the web page (headless setups).

Prints the otpauth:// provisioning URI (paste it into an authenticator app or
a QR generator you trust) and 10 backup codes, once, on stdout. Exit 1 when
USER already has an authenticator (run `otp_reset USER` first) or is unknown.
Audited as "2FA device enrolled" (without the secret).
"""

from __future__ import annotations

import getpass
import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from opsapp.services import two_factor
from opsapp.services.actors import Actor


class Command(BaseCommand):
    help = "Enroll USER's authenticator; print the provisioning URI and backup codes once."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        try:
            device, codes = two_factor.enroll_headless(Actor.cli(getpass.getuser()), user)
        except two_factor.TwoFactorError as exc:
            raise CommandError(str(exc)) from exc
        uri = device.config_url
        if options["json"]:
            self.stdout.write(json.dumps({"user": user.get_username(), "uri": uri, "backup_codes": codes}))
            return
        self.stdout.write(uri)
        if options["verbosity"] >= 1:
            self.stdout.write("")
            self.stdout.write("Backup codes (each works once; not shown again):")
            for code in codes:
                self.stdout.write(f"  {code}")
