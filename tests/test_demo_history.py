"""The demo target's Alembic history and env.py, run for real on PostgreSQL and SQLite."""

from __future__ import annotations

import io
import logging

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from conftest import REPO_ROOT, pg_query

from opsapp.services.alembic_api import connect, make_config, script_directory
from opsapp.targets import TargetConfig, get_target

DEMO_INI = REPO_ROOT / "alembic.ini"
HEAD = "c8a1d5f3b7ad"
ALL_TABLES = {"alembic_version", "accounts", "orders", "payments", "daily_totals", "refunds"}


@pytest.fixture(params=["postgresql", "sqlite"])
def demo_target(request, configure_target, tmp_path) -> TargetConfig:
    """The demo history configured as target `shop` on an empty database of each dialect."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    return get_target(configure_target("shop", url, DEMO_INI))


@pytest.fixture
def pg_demo_target(configure_target, pg_url) -> TargetConfig:
    return get_target(configure_target("shop", pg_url, DEMO_INI))


def migrate(target: TargetConfig, verb: str, revision: str) -> None:
    """Run `command.upgrade`/`downgrade` the way the console does: on its own connection, in its transaction."""
    # A fresh SQLite target starts as no file at all: the first upgrade creates it.
    with connect(target, create_sqlite_file=True) as conn, conn.begin():
        getattr(command, verb)(make_config(target, connection=conn), revision)


def heads(target: TargetConfig) -> set[str]:
    with connect(target) as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def schema(target: TargetConfig) -> dict[str, set[str]]:
    """Table -> column names, plus index names under `<table>:indexes`."""
    with connect(target) as conn:
        inspector = sa.inspect(conn)
        result: dict[str, set[str]] = {}
        for table in inspector.get_table_names():
            result[table] = {col["name"] for col in inspector.get_columns(table)}
            result[f"{table}:indexes"] = {ix["name"] for ix in inspector.get_indexes(table)}
        return result


def rows(target: TargetConfig, sql: str) -> list[tuple]:
    with connect(target) as conn:
        return [tuple(row) for row in conn.execute(sa.text(sql))]


def test_the_demo_history_has_a_branch_point_two_labelled_branches_a_dependency_and_a_merge(pg_demo_target):
    script = script_directory(pg_demo_target)
    revisions = list(script.walk_revisions())

    assert len(revisions) >= 10
    assert script.get_heads() == [HEAD]
    assert script.get_bases() == ["1f3e9a2c4b70"]
    branch_points = [rev for rev in revisions if rev.is_branch_point]
    assert [rev.revision for rev in branch_points] == ["3c9b6e0f2d14"]
    assert len(branch_points[0].nextrev) == 2
    labelled = {label: rev.revision for rev in revisions for label in (rev.module.branch_labels or ())}
    assert labelled == {"payments": "4e1a8b3d7c25", "reporting": "6d0e7a4b1f47"}
    assert {rev.revision: rev.dependencies for rev in revisions if rev.dependencies} == {"8e2b9d6a3c69": "5b6c2f9e0a36"}
    merges = [rev for rev in revisions if rev.is_merge_point]
    assert [(rev.revision, set(rev.down_revision)) for rev in merges] == [
        ("9c4f1e7b5d7a", {"5b6c2f9e0a36", "8e2b9d6a3c69"})
    ]
    # Labels carry through the merge: both branches end at the single head.
    assert script.get_revision("payments@head").revision == HEAD
    assert script.get_revision("reporting@head").revision == HEAD


def test_every_revision_file_has_an_alembic_style_docstring(pg_demo_target):
    for rev in script_directory(pg_demo_target).walk_revisions():
        doc = rev.module.__doc__ or ""
        assert rev.doc, rev.revision
        assert f"Revision ID: {rev.revision}" in doc
        assert "Revises:" in doc and "Create Date:" in doc, rev.revision


def test_it_goes_up_down_to_base_and_up_again_keeping_the_rows_the_schema_still_holds(demo_target):
    migrate(demo_target, "upgrade", "heads")
    assert heads(demo_target) == {HEAD}
    full = schema(demo_target)
    assert set(t for t in full if ":" not in t) == ALL_TABLES
    assert {"currency", "email"} <= full["accounts"] and "note" in full["orders"]
    assert "method" in full["payments"] and "card_total" in full["daily_totals"]

    with connect(demo_target) as conn, conn.begin():
        conn.execute(
            sa.text(
                "INSERT INTO accounts (id, owner, balance, currency, email) VALUES"
                " (1, 'Ada', 120.50, 'GBP', 'ada@example.test'), (2, 'Alan', 0, 'EUR', 'alan@example.test')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO orders (id, account_id, amount, status, note) VALUES"
                " (1, 1, 19.99, 'paid', 'fragile'), (2, 2, 5.00, 'new', NULL)"
            )
        )
        conn.execute(sa.text("INSERT INTO payments (id, order_id, amount, method) VALUES (1, 1, 19.99, 'paypal')"))
        conn.execute(sa.text("INSERT INTO refunds (id, payment_id, amount, reason) VALUES (1, 1, 5.00, 'late')"))

    # Down to just before the branch point: the branches, refunds and the added columns go ...
    migrate(demo_target, "downgrade", "2a7d4c81e5b3")
    assert heads(demo_target) == {"2a7d4c81e5b3"}
    low = schema(demo_target)
    assert set(t for t in low if ":" not in t) == {"alembic_version", "accounts", "orders"}
    assert low["accounts"] == {"id", "owner", "balance"}
    assert low["orders"] == {"id", "account_id", "amount", "status", "created_at"}
    assert low["orders:indexes"] == {"ix_orders_account_id_status"}
    # ... while the rows and the columns that survive keep their values.
    expected = [(1, "Ada", 120.5, 1, 19.99, "paid"), (2, "Alan", 0.0, 2, 5.0, "new")]
    query = (
        "SELECT a.id, a.owner, a.balance, o.id, o.amount, o.status FROM accounts a"
        " JOIN orders o ON o.account_id = a.id ORDER BY a.id"
    )
    assert [(r[0], r[1], float(r[2]), r[3], float(r[4]), r[5]) for r in rows(demo_target, query)] == expected

    # Up again: the dropped data is gone for good (defaults or NULL), the rest is intact.
    migrate(demo_target, "upgrade", "heads")
    assert schema(demo_target) == full
    assert rows(demo_target, "SELECT id, currency, email FROM accounts ORDER BY id") == [
        (1, "EUR", None),
        (2, "EUR", None),
    ]
    assert rows(demo_target, "SELECT count(*) FROM orders WHERE note IS NULL") == [(2,)]
    assert rows(demo_target, "SELECT count(*) FROM payments") == [(0,)]

    # The balance CHECK constraint survived the round trip on both dialects.
    with pytest.raises(sa.exc.IntegrityError), connect(demo_target) as conn, conn.begin():
        conn.execute(sa.text("UPDATE accounts SET balance = -1 WHERE id = 1"))

    migrate(demo_target, "downgrade", "base")
    assert heads(demo_target) == set()
    assert set(schema(demo_target)) == {"alembic_version", "alembic_version:indexes"}

    migrate(demo_target, "upgrade", "heads")
    assert heads(demo_target) == {HEAD}
    assert schema(demo_target) == full
    assert rows(demo_target, "SELECT count(*) FROM accounts") == [(0,)]


def test_each_revision_downgrades_by_one_step_and_upgrades_again_on_postgresql(pg_demo_target):
    target = pg_demo_target
    script = script_directory(target)
    for rev in reversed(list(script.walk_revisions())):
        migrate(target, "downgrade", "base")
        # Exactly what this revision needs (parents and depends_on), nothing else.
        needs = [*rev._all_down_revisions]
        for parent in needs:
            migrate(target, "upgrade", parent)
        before, before_heads = schema(target), heads(target)

        migrate(target, "upgrade", rev.revision)
        after = schema(target)
        assert rev.revision in heads(target)

        one_step_down = needs[0] if rev.is_merge_point else f"{rev.revision}-1"
        migrate(target, "downgrade", one_step_down)
        assert (schema(target), heads(target)) == (before, before_heads), rev.revision

        migrate(target, "upgrade", rev.revision)
        assert schema(target) == after, rev.revision


def test_a_transaction_the_caller_rolls_back_leaves_the_target_untouched_on_postgresql(pg_demo_target, pg_url):
    with connect(pg_demo_target) as conn:
        tx = conn.begin()
        command.upgrade(make_config(pg_demo_target, connection=conn), "heads")
        assert conn.in_transaction()
        tx.rollback()

    assert pg_query(pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'") == []


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_offline_sql_mode_renders_the_whole_downgrade_without_touching_the_database(
    dialect, configure_target, pg_url, tmp_path
):
    url = pg_url if dialect == "postgresql" else f"sqlite:///{tmp_path / 'never-created.sqlite3'}"
    target = get_target(configure_target("shop", url, DEMO_INI))
    buffer = io.StringIO()

    command.downgrade(make_config(target, output_buffer=buffer), "heads:base", sql=True)

    sql = buffer.getvalue()
    for statement in (
        "DROP TABLE refunds",
        "ALTER TABLE orders DROP COLUMN note",
        "ALTER TABLE accounts DROP COLUMN email",
        "ALTER TABLE payments DROP COLUMN method",
        "DROP TABLE payments",
        "DROP TABLE daily_totals",
        "DROP TABLE accounts",
    ):
        assert statement in sql, statement
    assert sql.index("DROP TABLE refunds") < sql.index("DROP TABLE payments") < sql.index("DROP TABLE accounts")
    if dialect == "postgresql":
        assert sql.lstrip().startswith("BEGIN;") and sql.rstrip().endswith("COMMIT;")
        tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        assert pg_query(pg_url, tables) == [(0,)]
    else:
        assert not (tmp_path / "never-created.sqlite3").exists()


def test_running_through_the_console_keeps_djangos_logging_configuration(demo_target):
    root, django_logger = logging.getLogger(), logging.getLogger("django")
    before = (list(root.handlers), root.level, list(django_logger.handlers), django_logger.level)

    migrate(demo_target, "upgrade", "heads")
    # Without a connection too (env.py opens its own engine; still the console's config).
    command.downgrade(make_config(demo_target), "base")

    assert (list(root.handlers), root.level, list(django_logger.handlers), django_logger.level) == before
    assert not django_logger.disabled and not logging.getLogger("opsapp").disabled
    assert heads(demo_target) == set()


def test_the_consoles_url_wins_over_the_environment_when_env_py_opens_its_own_connection(
    demo_target, monkeypatch, tmp_path
):
    elsewhere = tmp_path / "elsewhere.sqlite3"
    monkeypatch.setenv("OPS_TARGET_SHOP_URL", f"sqlite:///{elsewhere}")

    command.upgrade(make_config(demo_target), "heads")

    assert heads(demo_target) == {HEAD}
    assert not elsewhere.exists()
