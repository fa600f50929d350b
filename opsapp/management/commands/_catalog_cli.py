"""Shared bits of the catalog commands (sync_revisions, show_revisions, check_drift)."""

from __future__ import annotations

import getpass
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from opsapp.models import Revision, Target
from opsapp.services.actors import Actor
from opsapp.services.catalog import store


def target_names(option: str | None) -> list[str]:
    """The targets a command works on: the one named, or every configured one. Bad name: exit 2."""
    configured = list(settings.OPS_TARGETS)
    if option is None:
        return configured
    if option not in configured:
        raise CommandError(
            f"Unknown target {option!r}. Configured targets: {', '.join(configured) or 'none'}.", returncode=2
        )
    return [option]


def add_fleet_arguments(parser) -> None:
    """--target NAME | --all, and --jobs N (sync_revisions, check_drift)."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--target", metavar="NAME", help="only this target")
    which.add_argument("--all", action="store_true", help="every configured target (the default)")
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        default=None,
        help=f"targets read at once (default OPS_SYNC_JOBS={settings.OPS_SYNC_JOBS}); "
        "a down or slow target holds one of them for at most the connect/read timeout",
    )


def jobs_option(options: dict[str, Any]) -> int:
    jobs = options.get("jobs")
    if jobs is None:
        return max(1, settings.OPS_SYNC_JOBS)
    if jobs < 1:
        raise CommandError("--jobs must be at least 1.", returncode=2)
    return jobs


def command_actor() -> Actor:
    return Actor.cli(getpass.getuser())


def target_json(target: Target) -> dict[str, Any]:
    """The `show_revisions --json` object of one target (revisions newest first, like `alembic history`)."""
    applied, current = store.position_of(target)
    revisions = [
        {
            "revision": row["revision"],
            "down_revisions": row["down_revisions"],
            "branch_labels": row["branch_labels"],
            "depends_on": row["depends_on"],
            "message": row["message"],
            "create_date": row["create_date"] or None,
            "is_head": row["is_head"],
            "is_base": row["is_base"],
            "is_branch_point": row["is_branch_point"],
            "is_merge_point": row["is_merge_point"],
            "applied": row["revision"] in applied,
            "is_current": row["revision"] in current,
        }
        for row in Revision.objects.filter(catalog_id=target.catalog_id)
        .order_by("-position")
        .values(
            "revision",
            "down_revisions",
            "branch_labels",
            "depends_on",
            "message",
            "create_date",
            "is_head",
            "is_base",
            "is_branch_point",
            "is_merge_point",
        )
        .iterator(chunk_size=2000)
    ]
    return {
        "target": target.name,
        "state": target.state,
        "current": list(target.current_heads),
        "heads": list(target.script_heads),
        "revisions": revisions,
    }
