"""A small real world for admin tests: a PostgreSQL target at its heads, synced, with data,
a verified snapshot, and a pending rollback request whose code went to the approver.

Everything is real (throwaway database, Alembic upgrade, pg_dump, the services);
nothing is mocked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alembic import command
from django.core import mail

from tests.conftest import ScriptDir, pg_query

CODE_RE = re.compile(r"^Code: (\S+)\s*$", re.MULTILINE)


@dataclass
class World:
    name: str
    url: str
    scripts: ScriptDir
    target: object
    snapshot: object | None
    request: object | None


def build_world(
    *,
    pg_url: str,
    scripts: ScriptDir,
    configure_target,
    requester,
    name: str = "radm",
    to: str = "g7",
    with_snapshot: bool = True,
    with_request: bool = True,
) -> World:
    """Upgrade a throwaway target to its heads, sync it, snapshot it, request a downgrade to `to`."""
    from opsapp.services.actors import Actor
    from opsapp.services.alembic_api import make_config
    from opsapp.services.catalog import sync as catalog
    from opsapp.services.snapshots import lifecycle as snapshots
    from opsapp.targets import get_target

    configure_target(name, pg_url, scripts.ini)
    command.upgrade(make_config(get_target(name)), "heads")
    pg_query(pg_url, "INSERT INTO items (name, note, price) VALUES ('a', 'n1', 10), ('b', NULL, 20), ('c', 'n3', NULL)")
    target = catalog.sync_target(name)
    actor = Actor.from_user(requester)
    snapshot = snapshots.take_snapshot(name, actor=actor) if with_snapshot else None
    request = None
    if with_request:
        from opsapp.services.rollback import requests as rollback

        request = rollback.create_request(
            target_name=name,
            to=to,
            reason="price column broke checkout",
            actor=actor,
            snapshot_id=snapshot.pk if snapshot else None,
        )
    return World(name=name, url=pg_url, scripts=scripts, target=target, snapshot=snapshot, request=request)


def codes_in_outbox() -> list[str]:
    """Every verification code mailed so far, oldest first (as an approver reads them)."""
    return [m for message in mail.outbox for m in CODE_RE.findall(message.body)]


def target_heads(url: str) -> list[str]:
    return sorted(row[0] for row in pg_query(url, "SELECT version_num FROM alembic_version"))


def target_columns(url: str, table: str) -> list[str]:
    return sorted(
        row[0]
        for row in pg_query(url, "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))
    )
