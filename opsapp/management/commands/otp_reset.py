"""otp_reset USER: remove USER's 2FA devices (authenticator and backup codes).

USER enrolls again at the next sign-in. Exit 1 for an unknown user. Audited as
"2FA devices reset"; no secret is printed or recorded.
"""

from __future__ import annotations

import getpass

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from opsapp.services import two_factor
from opsapp.services.actors import Actor


class Command(BaseCommand):
    help = "Remove USER's 2FA devices; they enroll again at their next sign-in."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")

    def handle(self, *args, **options) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        count = two_factor.reset_devices(Actor.cli(getpass.getuser()), user)
        if options["verbosity"] >= 1:
            self.stdout.write(f"Removed {count} 2FA device(s) of {user.get_username()}.")
