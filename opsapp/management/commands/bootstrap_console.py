"""Create the quick-start accounts: an administrator and an approver.

Passwords come from OPS_ADMIN_PASSWORD / OPS_APPROVER_PASSWORD when set;
otherwise a random one is generated and printed once, at creation. An account
that already exists is left alone (its password is never reset or printed).

`--reset-password USER` gives an existing account a new random password,
prints it once and records a `password reset` audit event (never the
password). Django's own `manage.py changepassword USER` works too, when you
want to type the new password yourself (it is not audited).
"""

from __future__ import annotations

import getpass
import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import CommandError
from django.db import transaction

from opsapp.management.base import OpsCommand
from opsapp.models import AuditAction, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event


class Command(OpsCommand):
    help = "Create the quick-start admin and approver accounts (passwords printed once)."

    def add_arguments(self, parser):
        parser.add_argument("--admin-username", default=os.environ.get("OPS_ADMIN_USERNAME", "admin"))
        parser.add_argument("--approver-username", default=os.environ.get("OPS_APPROVER_USERNAME", "approver"))
        parser.add_argument(
            "--reset-password",
            metavar="USER",
            help="Give existing account USER a new random password, print it once, and audit the reset.",
        )

    def handle(self, *args, **options):
        if options["reset_password"]:
            return self.reset_password(options["reset_password"])
        User = get_user_model()
        try:
            approvers = Group.objects.get(name="approvers")
        except Group.DoesNotExist as exc:
            raise CommandError("The approvers group is missing: run `manage.py migrate` first.") from exc
        accounts = [
            (options["admin_username"], "OPS_ADMIN_PASSWORD", True, None),
            (options["approver_username"], "OPS_APPROVER_PASSWORD", False, approvers),
        ]
        printed = False
        for username, env_name, superuser, group in accounts:
            if User.objects.filter(username=username).exists():
                self.stdout.write(f"Account {username!r} exists; password unchanged.")
                continue
            given = os.environ.get(env_name)
            password = given or secrets.token_urlsafe(12)
            email = f"{username}@localhost"
            if superuser:
                user = User.objects.create_superuser(username, email, password)
            else:
                user = User.objects.create_user(username, email, password, is_staff=True)
                user.groups.add(group)
            shown = "(from " + env_name + ")" if given else password
            printed = printed or not given
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created {'superuser' if superuser else 'approver'} {username!r}, password: {shown}"
                )
            )
        if printed:
            self.stdout.write("Write the passwords above down: they are not shown again.")
        else:
            self.stdout.write(
                "Lost a password? `python manage.py bootstrap_console --reset-password USER` prints a new one."
            )

    def reset_password(self, username: str) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(username=username)
        except User.DoesNotExist as exc:
            raise CommandError(f"No account {username!r}.", returncode=2) from exc
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            user.set_password(password)
            user.save(update_fields=["password"])
            append_event(
                action=AuditAction.PASSWORD_RESET,
                outcome=AuditOutcome.SUCCESS,
                actor=Actor.cli(getpass.getuser()),
                message=f"password of {username} reset from the command line",
                detail={"user": username, "user_id": user.pk},
            )
        self.stdout.write(self.style.SUCCESS(f"New password for {username!r}: {password}"))
        self.stdout.write("Write it down: it is not shown again.")
