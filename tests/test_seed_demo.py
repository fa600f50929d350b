"""`seed_demo` and `manage.py seed_demo` against real PostgreSQL and SQLite targets."""

from __future__ import annotations

import io
import json

import pytest
import sqlalchemy as sa
from alembic import command
from conftest import REPO_ROOT, pg_query
from django.core.management import call_command
from django.core.management.base import CommandError

from opsapp.demo.seed import seed_demo
from opsapp.services.alembic_api import connect, make_config
from opsapp.services.errors import OpsError
from opsapp.targets import get_target

DEMO_INI = REPO_ROOT / "alembic.ini"
HEAD = "c8a1d5f3b7ad"
EXPECTED_COUNTS = {"accounts": 20, "orders": 100, "payments": 60, "daily_totals": 21, "refunds": 8}


@pytest.fixture(params=["postgresql", "sqlite"])
def shop(request, configure_target, tmp_path) -> str:
    """Target `shop` on the demo history, on an empty database of each dialect."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        # A folder that does not exist yet, like var/ on a fresh clone.
        url = f"sqlite:///{tmp_path / 'var' / 'shop.sqlite3'}"
    return configure_target("shop", url, DEMO_INI)


def scalar(name: str, sql: str):
    with connect(get_target(name)) as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def test_seed_demo_brings_the_target_to_head_and_fills_every_table(shop):
    result = seed_demo(shop)

    assert result["heads"] == [HEAD]
    assert result["counts"] == EXPECTED_COUNTS
    assert result["inserted"] == EXPECTED_COUNTS
    assert scalar(shop, "SELECT version_num FROM alembic_version") == HEAD
    # The columns later downgrades drop hold real data.
    assert scalar(shop, "SELECT count(*) FROM accounts WHERE email LIKE '%@shop.example'") == 20
    assert scalar(shop, "SELECT count(DISTINCT currency) FROM accounts") == 3
    assert scalar(shop, "SELECT count(*) FROM orders WHERE note IS NOT NULL") == 33
    assert scalar(shop, "SELECT count(DISTINCT method) FROM payments") == 3
    assert scalar(shop, "SELECT count(*) FROM daily_totals WHERE card_total > 0") > 0
    assert scalar(shop, "SELECT count(*) FROM accounts WHERE balance > 0") >= 19


def test_seed_demo_is_idempotent(shop):
    first = seed_demo(shop)
    balances = scalar(shop, "SELECT SUM(balance) FROM accounts")

    second = seed_demo(shop)

    assert second["counts"] == first["counts"] == EXPECTED_COUNTS
    assert second["inserted"] == dict.fromkeys(EXPECTED_COUNTS, 0)
    assert second["heads"] == [HEAD]
    assert scalar(shop, "SELECT SUM(balance) FROM accounts") == balances


def test_seed_demo_never_moves_a_database_the_user_downgraded(shop):
    seed_demo(shop)
    target = get_target(shop)
    with connect(target) as conn, conn.begin():
        command.downgrade(make_config(target, connection=conn), "9c4f1e7b5d7a")
    orders = scalar(shop, "SELECT count(*) FROM orders")

    result = seed_demo(shop)

    assert result["left_alone"] is True and result["upgraded"] is False
    assert result["heads"] == ["9c4f1e7b5d7a"] and result["script_heads"] == [HEAD]
    assert scalar(shop, "SELECT version_num FROM alembic_version") == "9c4f1e7b5d7a"
    assert "email" not in {c["name"] for c in _columns(shop, "accounts")}
    assert scalar(shop, "SELECT count(*) FROM orders") == orders
    assert result["inserted"] == dict.fromkeys(EXPECTED_COUNTS, 0)


def test_the_command_says_it_left_a_downgraded_database_alone(shop):
    seed_demo(shop)
    target = get_target(shop)
    with connect(target) as conn, conn.begin():
        command.downgrade(make_config(target, connection=conn), "9c4f1e7b5d7a")
    out = io.StringIO()

    call_command("seed_demo", "--target", shop, stdout=out)

    assert "is at 9c4f1e7b5d7a, not at its heads c8a1d5f3b7ad: left as it is" in out.getvalue()
    assert scalar(shop, "SELECT version_num FROM alembic_version") == "9c4f1e7b5d7a"


def test_seed_demo_refills_the_data_a_downgrade_destroyed_once_the_user_upgrades_again(shop):
    seed_demo(shop)
    target = get_target(shop)
    with connect(target) as conn, conn.begin():
        command.downgrade(make_config(target, connection=conn), "9c4f1e7b5d7a")
    with connect(target) as conn, conn.begin():
        command.upgrade(make_config(target, connection=conn), "heads")
    assert scalar(shop, "SELECT count(*) FROM accounts WHERE email IS NOT NULL") == 0

    result = seed_demo(shop)

    assert result["inserted"] == {**dict.fromkeys(EXPECTED_COUNTS, 0), "refunds": 8}
    assert scalar(shop, "SELECT count(*) FROM accounts WHERE email IS NOT NULL") == 20
    assert scalar(shop, "SELECT count(*) FROM orders WHERE note IS NOT NULL") == 33


def test_seed_demo_leaves_postgresql_sequences_past_the_seeded_ids(configure_target, pg_url):
    name = configure_target("shop", pg_url, DEMO_INI)
    seed_demo(name)

    new_id = pg_query(pg_url, "INSERT INTO accounts (owner, balance) VALUES ('New', 1) RETURNING id")[0][0]

    assert new_id == 21


def test_the_command_prints_json_that_parses(shop):
    out, err = io.StringIO(), io.StringIO()
    call_command("seed_demo", "--target", shop, "--json", stdout=out, stderr=err)

    result = json.loads(out.getvalue())
    assert result["target"] == shop and result["heads"] == [HEAD]
    assert result["counts"] == EXPECTED_COUNTS


def test_the_command_prints_a_human_summary(shop):
    out = io.StringIO()
    call_command("seed_demo", "--target", shop, stdout=out)

    assert "Seeded target 'shop' (" in out.getvalue()
    assert "accounts: 20 rows (20 new)" in out.getvalue()


def test_the_command_refuses_an_unreachable_target_without_showing_its_password(configure_target, pg_url):
    missing_db = pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@") + "_missing"
    configure_target("shop", missing_db, DEMO_INI)

    with pytest.raises(CommandError) as excinfo:
        call_command("seed_demo", "--target", "shop", stdout=io.StringIO())

    assert excinfo.value.returncode == 1
    assert "Target 'shop' is unreachable" in str(excinfo.value)
    assert "s3cret" not in str(excinfo.value)
    assert pg_query(pg_url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]


def test_the_command_refuses_an_unknown_target_as_bad_usage():
    with pytest.raises(CommandError) as excinfo:
        call_command("seed_demo", "--target", "nowhere", stdout=io.StringIO())

    assert excinfo.value.returncode == 2
    assert "Target 'nowhere' is not configured" in str(excinfo.value)


def test_the_command_refuses_a_misconfigured_target(configure_target, tmp_path):
    configure_target("shop", f"sqlite:///{tmp_path / 'shop.sqlite3'}", tmp_path / "no-such-alembic.ini")

    with pytest.raises(CommandError) as excinfo:
        call_command("seed_demo", "--target", "shop", stdout=io.StringIO())

    assert excinfo.value.returncode == 1
    assert "does not exist" in str(excinfo.value)
    assert not (tmp_path / "shop.sqlite3").exists()


def test_it_refuses_a_target_that_is_not_the_demo_schema_and_rolls_everything_back(
    configure_target, pg_url, branchy_scripts
):
    name = configure_target("other", pg_url, branchy_scripts.ini)

    with pytest.raises(OpsError) as excinfo:
        seed_demo(name)

    assert "is not the demo shop schema" in str(excinfo.value)
    assert "accounts" in str(excinfo.value)
    # PostgreSQL's transactional DDL: the upgrade that ran was rolled back too.
    assert pg_query(pg_url, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]


def _columns(name: str, table: str) -> list[dict]:
    with connect(get_target(name)) as conn:
        return sa.inspect(conn).get_columns(table)
