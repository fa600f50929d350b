"""Create the quick-start accounts: an administrator and an approver.

Passwords come from OPS_ADMIN_PASSWORD / OPS_APPROVER_PASSWORD when set;
otherwise a random one is generated and printed once, at creation. An account
that already exists is left alone (its password is never reset or printed).
"""

from __future__ import annotations

import os
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand


class Command(OpsCommand):
    help = "Create the quick-start admin and approver accounts (passwords printed once)."

    def add_arguments(self, parser):
        parser.add_argument("--admin-username", default=os.environ.get("OPS_ADMIN_USERNAME", "admin"))
        parser.add_argument("--approver-username", default=os.environ.get("OPS_APPROVER_USERNAME", "approver"))

    def handle(self, *args, **options):
        User = get_user_model()
        try:
            approvers = Group.objects.get(name="approvers")
        except Group.DoesNotExist as exc:
            raise CommandError("The approvers group is missing: run `manage.py migrate` first.") from exc
        accounts = [
            (options["admin_username"], "OPS_ADMIN_PASSWORD", True, None),
            (options["approver_username"], "OPS_APPROVER_PASSWORD", False, approvers),
        ]
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
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created {'superuser' if superuser else 'approver'} {username!r}, password: {shown}"
                )
            )
        if not any(os.environ.get(n) for n in ("OPS_ADMIN_PASSWORD", "OPS_APPROVER_PASSWORD")):
            self.stdout.write("Write the passwords above down: they are not shown again.")
