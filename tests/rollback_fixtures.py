"""Fixtures for the guarded downgrade: a real throwaway PostgreSQL target holding data.

Use from a test module with `pytest_plugins = ["rollback_fixtures"]`.

`rollback_env` is target `rbt`: a throwaway database and script directory
with a 3-step linear history, upgraded and filled with rows, catalog synced:

    r1  create customers(id, name)           3 rows
    r2  add customers.email                  3 non-null values
    r3  create notes(id, body)               2 rows

`ready_request` adds a verified snapshot (real pg_dump) and a pending request
`rbt -> r1` by the operator `olga`, whose code went to the approver `anton`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from conftest import REPO_ROOT, ScriptDir, pg_query
from django.core import mail

TARGET = "rbt"

R1_UP = "op.create_table('customers', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.String(50)))"
R2_UP = "op.add_column('customers', sa.Column('email', sa.String(100)))"
R3_UP = "op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True), sa.Column('body', sa.Text))"


@dataclass
class RollbackEnv:
    """One throwaway target: its URL, script directory and configured name."""

    name: str
    url: str
    scripts: ScriptDir

    @property
    def config(self):
        from opsapp.targets import get_target

        return get_target(self.name)

    # ------------------------------------------------------------ reading
    def heads(self) -> list[str]:
        rows = pg_query(self.url, "SELECT version_num FROM alembic_version ORDER BY 1")
        return [r[0] for r in rows]

    def schema(self) -> dict[str, list[str]]:
        rows = pg_query(
            self.url,
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
        )
        result: dict[str, list[str]] = {}
        for table, column in rows:
            result.setdefault(table, []).append(column)
        return result

    def counts(self) -> dict[str, int]:
        return {
            table: pg_query(self.url, f'SELECT count(*) FROM "{table}"')[0][0]
            for table in self.schema()
            if table != "alembic_version"
        }

    def state(self) -> tuple:
        """Everything a refusal must leave unchanged: heads, schema, row counts."""
        return (self.heads(), self.schema(), self.counts())

    # ------------------------------------------------------------ changing
    def upgrade(self, to: str = "heads") -> None:
        from opsapp.services.alembic_api import connect, make_config

        with connect(self.config) as conn:
            with conn.begin():
                command.upgrade(make_config(self.config, connection=conn), to)

    def downgrade_outside(self, to: str) -> None:
        """Move the target as someone running plain Alembic would (not through the console)."""
        from opsapp.services.alembic_api import connect, make_config

        with connect(self.config) as conn:
            with conn.begin():
                command.downgrade(make_config(self.config, connection=conn), to)

    def sync(self):
        from opsapp.services.catalog.sync import sync_target

        return sync_target(self.name)

    def add_revision(self, rev: str, down: str, *, upgrade: str = "pass", downgrade: str = "pass", apply: bool = True):
        self.scripts.add(rev, down, message=f"rev {rev}", upgrade=upgrade, downgrade=downgrade)
        if apply:
            self.upgrade()
        self.sync()

    # ------------------------------------------------------------ subprocesses
    def subprocess_env(self, settings) -> dict[str, str]:
        """Environment for a `manage.py` child that sees the same console DB, target and snapshots."""
        from django.db import connection

        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "console.settings_test",
                "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}",
                "SECRET_KEY": settings.SECRET_KEY,
                "OPS_TARGETS": self.name,
                f"OPS_TARGET_{self.name.upper()}_URL": self.url,
                f"OPS_TARGET_{self.name.upper()}_ALEMBIC_INI": str(self.scripts.ini),
                "OPS_SNAPSHOT_DIR": str(settings.OPS_SNAPSHOT_DIR),
                "OPS_LOCK_WAIT_SECONDS": str(settings.OPS_LOCK_WAIT_SECONDS),
                "OPS_SNAPSHOT_MAX_AGE_SECONDS": str(settings.OPS_SNAPSHOT_MAX_AGE_SECONDS),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def manage(self, settings, *args: str, **popen) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "manage.py"), *args],
            cwd=REPO_ROOT,
            env=self.subprocess_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )


def build_rollback_env(name: str, url: str, scripts: ScriptDir, configure_target) -> RollbackEnv:
    scripts.add("r1", None, message="create customers", upgrade=R1_UP, downgrade="op.drop_table('customers')")
    scripts.add("r2", "r1", message="add email", upgrade=R2_UP, downgrade="op.drop_column('customers', 'email')")
    scripts.add("r3", "r2", message="create notes", upgrade=R3_UP, downgrade="op.drop_table('notes')")
    configure_target(name, url, scripts.ini)
    env = RollbackEnv(name, url, scripts)
    env.upgrade()
    pg_query(
        url,
        "INSERT INTO customers (id, name, email) VALUES "
        "(1, 'Ada', 'ada@example.test'), (2, 'Alan', 'alan@example.test'), (3, 'Grace', 'grace@example.test')",
    )
    pg_query(url, "INSERT INTO notes (id, body) VALUES (1, 'first'), (2, 'second')")
    env.sync()
    return env


@pytest.fixture
def roles_present() -> None:
    """Re-create the role groups: a `transaction=True` test's flush deletes them (migration-made rows).

    Request it before the personas in transactional tests.
    """
    from django.contrib.auth.models import Group, Permission

    from opsapp.roles import ROLES

    for name, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        objs = [
            Permission.objects.get(content_type__app_label=perm.split(".")[0], codename=perm.split(".")[1])
            for perm in perms
        ]
        group.permissions.set(objs)


@pytest.fixture
def rollback_env(pg_database_factory, script_dir_factory, configure_target, snapshot_dir) -> RollbackEnv:
    url = pg_database_factory()
    return build_rollback_env(TARGET, url, script_dir_factory(url), configure_target)


def operator_actor(user):
    from opsapp.services.actors import Actor

    return Actor.from_user(user)


def take_verified_snapshot(env: RollbackEnv, user):
    from opsapp.services.snapshots.lifecycle import take_snapshot

    snap = take_snapshot(env.name, actor=operator_actor(user))
    assert snap.status == "verified", snap.error
    return snap


def code_from_outbox(request_id: int, recipient: str | None = None) -> str:
    """The code of the newest email about `request_id` (optionally to one address)."""
    for message in reversed(mail.outbox):
        if f"request #{request_id} " not in message.subject:
            continue
        if recipient and recipient not in message.to:
            continue
        match = re.search(r"^Code: (\d+)$", message.body, re.M)
        assert match, message.body
        return match[1]
    raise AssertionError(f"no code email for request #{request_id}")


def make_request(env: RollbackEnv, user, *, to: str = "r1", snapshot=None, reason: str = "bad release"):
    from opsapp.services.rollback.requests import create_request

    return create_request(
        target_name=env.name,
        to=to,
        reason=reason,
        actor=operator_actor(user),
        snapshot_id=snapshot.pk if snapshot is not None else None,
    )


@dataclass
class ReadyRequest:
    env: RollbackEnv
    request: object
    code: str
    snapshot: object


@pytest.fixture
def ready_request(rollback_env, operator, approver) -> ReadyRequest:
    """A pending request rbt -> r1 with a verified snapshot attached and its code (mailed to anton)."""
    snap = take_verified_snapshot(rollback_env, operator)
    request = make_request(rollback_env, operator, snapshot=snap)
    assert request.code_recipients == [approver.username]
    return ReadyRequest(rollback_env, request, code_from_outbox(request.pk, approver.email), snap)


def audit_actions(request_id: int) -> list[str]:
    from opsapp.models import AuditEvent

    return list(AuditEvent.objects.filter(request_id=request_id).order_by("seq").values_list("action", flat=True))


def last_refusal(request_id: int):
    from opsapp.models import AuditEvent

    return AuditEvent.objects.filter(request_id=request_id, action="rollback_refused").order_by("-seq").first()


__all__ = [
    "TARGET",
    "Path",
    "ReadyRequest",
    "RollbackEnv",
    "audit_actions",
    "build_rollback_env",
    "code_from_outbox",
    "last_refusal",
    "make_request",
    "operator_actor",
    "ready_request",
    "roles_present",
    "rollback_env",
    "take_verified_snapshot",
]


# ------------------------------------------------------------------ waiting on real processes
def wait_for(predicate, *, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {out}\n{err}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sleeping_backends(url: str, needle: str) -> list[tuple]:
    return pg_query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active' AND query LIKE %s",
        (f"%{needle}%",),
    )
