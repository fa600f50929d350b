"""Shared bits of request_rollback and execute_rollback: the named actor and the JSON result."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from opsapp.services.actors import Actor


def named_actor(username: str | None, *, permission: str, command: str) -> Actor:
    """The CLI actor: the named, active console user holding `permission`.

    Unknown or inactive user: bad usage (exit 2). Missing permission: refused (exit 1).
    The audit row carries the username and `manage.py <command>` as user agent.
    """
    if not username:
        raise CommandError("--actor USERNAME is required: name the console user you act as.", returncode=2)
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        raise CommandError(f"Unknown user {username!r}: --actor must name a console user.", returncode=2)
    if not user.is_active:
        raise CommandError(f"User {username!r} is inactive.", returncode=2)
    if not user.has_perm(permission):
        raise CommandError(f"User {username!r} lacks the permission {permission!r} needed for {command}.")
    return Actor.from_user(user, user_agent=f"cli: manage.py {command}")


def result_json(
    *, request_id: int | None, status: str, gate: str | None, message: str, heads: list[str] | None, **extra: Any
) -> dict[str, Any]:
    """{id, status, gate, message, heads}, plus `extra` keys (a failed downgrade adds where it failed)."""
    return {"id": request_id, "status": status, "gate": gate, "message": message, "heads": list(heads or []), **extra}


def emit(command: BaseCommand, options: dict[str, Any], payload: dict[str, Any] | list, human: str) -> None:
    """Machine output on stdout with --json; otherwise one human line (unless -v 0)."""
    if options["json"]:
        command.stdout.write(json.dumps(payload))
    elif options["verbosity"] >= 1 and human:
        command.stdout.write(human)
