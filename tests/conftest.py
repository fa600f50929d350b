"""Shared fixtures: personas, throwaway target databases, throwaway script directories.

Everything is real: databases are created and dropped on the PostgreSQL server
the test settings point at (127.0.0.1:5432 by default); script directories are
real Alembic environments written to tmp_path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings as django_settings

from opsapp.demo.history_gen import ScriptDir

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("OPS_TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")


# --------------------------------------------------------------------- databases
def _admin_conn() -> psycopg.Connection:
    return psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True)


def create_pg_database(prefix: str = "ops_t") -> str:
    """Create an empty database; return its URL (postgresql://...)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Factory of throwaway PostgreSQL databases, dropped after the test."""
    created: list[str] = []

    def make() -> str:
        url = create_pg_database()
        created.append(url)
        return url

    yield make
    for url in created:
        drop_pg_database(url)


@pytest.fixture
def pg_url(pg_database_factory) -> str:
    """One throwaway, empty PostgreSQL database."""
    return pg_database_factory()


def pg_query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on a target database outside Django; return rows (or [])."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


# --------------------------------------------------------------------- targets
@pytest.fixture
def configure_target(settings) -> Callable[..., str]:
    """Register a target in settings.OPS_TARGETS for the duration of the test.

    Returns the target name. Uses pytest-django's `settings` fixture, so the
    change is undone afterwards.
    """

    def configure(name: str, url: str, alembic_ini: str | Path, isolation_level: str = "SERIALIZABLE") -> str:
        targets = dict(settings.OPS_TARGETS)
        targets[name] = {"URL": url, "ALEMBIC_INI": str(alembic_ini), "ISOLATION_LEVEL": isolation_level}
        settings.OPS_TARGETS = targets
        return name

    return configure


@pytest.fixture
def snapshot_dir(tmp_path, settings) -> Path:
    path = tmp_path / "snapshots"
    path.mkdir()
    settings.OPS_SNAPSHOT_DIR = path
    return path


# ------------------------------------------------------------ script directories
@pytest.fixture
def script_dir_factory(tmp_path) -> Callable[..., ScriptDir]:
    """Factory of empty throwaway script directories."""
    counter = iter(range(1000))

    def make(url: str = "") -> ScriptDir:
        return ScriptDir(tmp_path / f"scripts{next(counter)}", url)

    return make


def build_branchy_history(sd: ScriptDir) -> ScriptDir:
    """A small real history: base -> branch point -> two labelled branches -> merge -> one more.

    a1 (base, creates `items`) -> b2 (branch point)
      b2 -> c3 (branch `left`, adds items.note) -> d4
      b2 -> e5 (branch `right`, creates `tags`, depends_on c3) -> f6
    (d4, f6) -> g7 merge -> h8 (adds items.price)
    Plus a second base x1 (its own tree: creates `other`).
    """
    sd.add(
        "a1",
        None,
        message="create items",
        upgrade="op.create_table('items', sa.Column('id', sa.Integer, primary_key=True), sa.Column('name', sa.String(50)))",
        downgrade="op.drop_table('items')",
    )
    sd.add("b2", "a1", message="branch point")
    sd.add(
        "c3",
        "b2",
        message="left adds note",
        branch_labels=("left",),
        upgrade="op.add_column('items', sa.Column('note', sa.String(100)))",
        downgrade="op.drop_column('items', 'note')",
    )
    sd.add("d4", "c3", message="left more")
    sd.add(
        "e5",
        "b2",
        message="right creates tags",
        branch_labels="right",
        depends_on="c3",
        upgrade="op.create_table('tags', sa.Column('id', sa.Integer, primary_key=True), sa.Column('label', sa.String(30)))",
        downgrade="op.drop_table('tags')",
    )
    sd.add("f6", "e5", message="right more")
    sd.add("g7", ("d4", "f6"), message="merge left and right")
    sd.add(
        "h8",
        "g7",
        message="add price",
        upgrade="op.add_column('items', sa.Column('price', sa.Integer))",
        downgrade="op.drop_column('items', 'price')",
    )
    sd.add(
        "x1",
        None,
        message="second base",
        branch_labels="other",
        upgrade="op.create_table('other', sa.Column('id', sa.Integer, primary_key=True))",
        downgrade="op.drop_table('other')",
        docstring=False,
    )
    return sd


@pytest.fixture
def branchy_scripts(script_dir_factory) -> ScriptDir:
    """The small branch/merge history above, as a real script directory."""
    return build_branchy_history(script_dir_factory())


# ------------------------------------------------------------------- personas
def _user(django_user_model, username: str, groups: tuple[str, ...] = (), perms: tuple[str, ...] = (), **extra):
    from django.contrib.auth.models import Group, Permission

    ensure_roles()
    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username, email=f"{username}@example.test", is_staff=True, **extra
    )
    for group in groups:
        user.groups.add(Group.objects.get(name=group))
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return user


def ensure_roles() -> None:
    """Re-create the role groups when missing.

    The data migration creates them, but the flush after a `transaction=True`
    test empties auth_group (post_migrate re-creates permissions, not groups).
    """
    from django.contrib.auth.models import Group, Permission

    from opsapp.roles import ROLES

    for name, perms in ROLES.items():
        group, created = Group.objects.get_or_create(name=name)
        if created or group.permissions.count() != len(perms):
            group.permissions.set(
                [
                    Permission.objects.get(content_type__app_label=p.split(".")[0], codename=p.split(".")[1])
                    for p in perms
                ]
            )


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("admin", "admin@example.test", "pw-admin")


@pytest.fixture
def operator(django_user_model):
    return _user(django_user_model, "olga", groups=("operators",))


@pytest.fixture
def approver(django_user_model):
    return _user(django_user_model, "anton", groups=("approvers",))


@pytest.fixture
def auditor(django_user_model):
    return _user(django_user_model, "aude", groups=("auditors",))


@pytest.fixture
def outsider(django_user_model):
    return _user(django_user_model, "oscar")


@pytest.fixture(autouse=True)
def _isolated_snapshot_dir(tmp_path_factory, settings) -> None:
    """Every test gets its own snapshot directory unless it asks for `snapshot_dir`."""
    settings.OPS_SNAPSHOT_DIR = tmp_path_factory.mktemp("snapshots")
    # Signed audit checkpoints outlive a test's database: each test publishes its own.
    settings.OPS_AUDIT_CHECKPOINT_DIR = tmp_path_factory.mktemp("audit-checkpoints")


def repo_path(*parts: str) -> Path:
    return REPO_ROOT.joinpath(*parts)


__all__ = [
    "ScriptDir",
    "build_branchy_history",
    "create_pg_database",
    "drop_pg_database",
    "pg_query",
    "django_settings",
]


# ------------------------------------------------------ append-only audit table
@pytest.fixture(scope="session", autouse=True)
def _flush_may_empty_the_audit_table():
    """Let the flush after each `transaction=True` test empty the append-only audit table.

    Migration 0003 installs triggers that refuse UPDATE, DELETE and TRUNCATE on
    opsapp_auditevent, and Django's flush is a TRUNCATE. Here (and only here,
    in the test suite) the flush disables the table's triggers, truncates and
    re-enables them inside its own single transaction: no other connection ever
    sees the triggers off, and every test runs against the strict triggers.
    """
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        sql = original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        if sql and "opsapp_auditevent" in tables:
            sql = [
                "ALTER TABLE opsapp_auditevent DISABLE TRIGGER USER;",
                *sql,
                "ALTER TABLE opsapp_auditevent ENABLE TRIGGER USER;",
            ]
        return sql

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = original
