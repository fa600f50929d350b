"""Seed the demo target with sample rows so a downgrade has data to lose.

`seed_demo` creates a *new* demo database (one with no Alembic revision yet) and
brings it to its heads through Alembic's Python API on a connection the console
owns, then inserts a fixed, deterministic data set:
accounts with balances, orders, payments, daily totals and refunds, with
values in the columns that later downgrades drop (accounts.currency,
accounts.email, orders.note, payments.method, daily_totals.card_total).

Idempotent: rows are keyed by fixed ids (days for daily_totals), only missing
rows are inserted, and dropped-then-restored columns are refilled where they
came back empty. Running it twice gives the same counts.

It never moves an existing database: one that already has a revision stays at
that revision (a user's downgrade survives `make run`, and a pending request's
plan is not made stale). Sample rows are filled in only when the database is
at its heads; otherwise nothing is written and the result says so.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from opsapp.services.alembic_api import connect, make_config
from opsapp.services.errors import OpsError
from opsapp.targets import get_target, mask_url

ACCOUNTS = 20
ORDERS = 100
PAYMENTS = 60
REFUNDS = 8
START = dt.datetime(2026, 3, 1, 8, 0, 0)
DEMO_TABLES = ("accounts", "orders", "payments", "daily_totals", "refunds")

_OWNERS = (
    "Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov",
    "Donald Knuth", "Margaret Hamilton", "Ken Thompson", "Frances Allen", "John Backus",
    "Radia Perlman", "Tony Hoare", "Leslie Lamport", "Adele Goldberg", "Niklaus Wirth",
    "Shafi Goldwasser", "Dennis Ritchie", "Jean Sammet", "Alan Kay", "Karen Sparck Jones",
)  # fmt: skip
_STATUSES = ("new", "paid", "shipped", "cancelled")
_METHODS = ("card", "card", "transfer", "paypal")
_CURRENCIES = ("EUR", "EUR", "USD", "GBP")

_accounts = sa.table(
    "accounts",
    sa.column("id", sa.Integer),
    sa.column("owner", sa.String),
    sa.column("balance", sa.Numeric),
    sa.column("currency", sa.String),
    sa.column("email", sa.String),
)
_orders = sa.table(
    "orders",
    sa.column("id", sa.Integer),
    sa.column("account_id", sa.Integer),
    sa.column("amount", sa.Numeric),
    sa.column("status", sa.String),
    sa.column("created_at", sa.DateTime),
    sa.column("note", sa.Text),
)
_payments = sa.table(
    "payments",
    sa.column("id", sa.Integer),
    sa.column("order_id", sa.Integer),
    sa.column("amount", sa.Numeric),
    sa.column("paid_at", sa.DateTime),
    sa.column("method", sa.String),
)
_daily_totals = sa.table(
    "daily_totals",
    sa.column("day", sa.Date),
    sa.column("order_count", sa.Integer),
    sa.column("amount_total", sa.Numeric),
    sa.column("card_total", sa.Numeric),
)
_refunds = sa.table(
    "refunds",
    sa.column("id", sa.Integer),
    sa.column("payment_id", sa.Integer),
    sa.column("amount", sa.Numeric),
    sa.column("reason", sa.String),
    sa.column("created_at", sa.DateTime),
)


def demo_rows() -> dict[str, list[dict[str, Any]]]:
    """The fixed sample data set, keyed by table (same values on every call)."""
    rng = random.Random(20260301)
    accounts = [
        {
            "id": i,
            "owner": owner,
            "balance": Decimal(rng.randrange(0, 500_000)) / 100,
            "currency": _CURRENCIES[i % len(_CURRENCIES)],
            "email": f"{owner.lower().replace(' ', '.')}@shop.example",
        }
        for i, owner in enumerate(_OWNERS[:ACCOUNTS], start=1)
    ]
    orders = [
        {
            "id": i,
            "account_id": (i - 1) % ACCOUNTS + 1,
            "amount": Decimal(rng.randrange(500, 90_000)) / 100,
            "status": "paid" if i <= PAYMENTS else _STATUSES[i % len(_STATUSES)],
            "created_at": START + dt.timedelta(hours=5 * (i - 1), minutes=rng.randrange(60)),
            "note": f"gift wrap, order {i}" if i % 3 == 0 else None,
        }
        for i in range(1, ORDERS + 1)
    ]
    payments = [
        {
            "id": i,
            "order_id": i,
            "amount": orders[i - 1]["amount"],
            "paid_at": orders[i - 1]["created_at"] + dt.timedelta(minutes=30),
            "method": _METHODS[i % len(_METHODS)],
        }
        for i in range(1, PAYMENTS + 1)
    ]
    totals: dict[dt.date, dict[str, Any]] = {}
    for order in orders:
        day = order["created_at"].date()
        row = totals.setdefault(
            day, {"day": day, "order_count": 0, "amount_total": Decimal("0.00"), "card_total": Decimal("0.00")}
        )
        row["order_count"] += 1
        row["amount_total"] += order["amount"]
    for payment in payments:
        if payment["method"] == "card":
            totals[orders[payment["order_id"] - 1]["created_at"].date()]["card_total"] += payment["amount"]
    refunds = [
        {
            "id": n,
            "payment_id": payment_id,
            "amount": (payments[payment_id - 1]["amount"] / 2).quantize(Decimal("0.01")),
            "reason": ("damaged in transit", "wrong size", "late delivery", "duplicate charge")[n % 4],
            "created_at": payments[payment_id - 1]["paid_at"] + dt.timedelta(days=2),
        }
        for n, payment_id in enumerate(range(5, 5 + 7 * REFUNDS, 7), start=1)
    ]
    return {
        "accounts": accounts,
        "orders": orders,
        "payments": payments,
        "daily_totals": list(totals.values()),
        "refunds": refunds,
    }


def _insert_missing(conn: sa.Connection, table: sa.TableClause, key: str, rows: list[dict[str, Any]]) -> int:
    existing = set(conn.execute(sa.select(table.c[key])).scalars())
    # SQLite hands dates back as date objects too, so keys compare directly.
    missing = [row for row in rows if row[key] not in existing]
    if missing:
        conn.execute(table.insert(), missing)
    return len(missing)


def _refill(conn: sa.Connection, table: sa.TableClause, key: str, column: str, rows: list[dict[str, Any]]) -> None:
    """Refill `column` where a downgrade/upgrade cycle brought it back empty or defaulted."""
    stmt = (
        table.update()
        .where(table.c[key] == sa.bindparam("_key"))
        .where(sa.or_(table.c[column].is_(None), table.c[column] != sa.bindparam("_value")))
        .values({column: sa.bindparam("_value")})
    )
    conn.execute(stmt, [{"_key": row[key], "_value": row[column]} for row in rows])


def _fix_sequences(conn: sa.Connection) -> None:
    """Explicit ids leave PostgreSQL's serial sequences behind; move them past the rows."""
    for table in ("accounts", "orders", "payments", "refunds"):
        conn.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
        )


def _ensure_sqlite_directory(url: str) -> None:
    """The embedded default lives under var/; create the folder on first use."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def seed_demo(target_name: str = "shop") -> dict[str, Any]:
    """Create what is missing of the demo target `target_name`; never move an existing database.

    A database without a revision is upgraded to its heads and filled with the
    demo data set; one at its heads gets its missing rows; one at any other
    revision is left exactly as it is. Everything runs in one transaction on a
    connection the console owns.
    Returns {"target", "url" (masked), "heads", "upgraded" (bool), "left_alone" (bool),
    "script_heads", "inserted": {table: n}, "counts": {table: n}}.
    Raises TargetNotConfigured / TargetMisconfigured / TargetUnreachable, or OpsError when
    the upgrade fails or the target's schema is not the demo shop schema.
    """
    target = get_target(target_name)
    _ensure_sqlite_directory(target.sqlalchemy_url)
    data = demo_rows()
    with connect(target, create_sqlite_file=True) as conn:
        try:
            with conn.begin():
                config = make_config(target, connection=conn)
                script_heads = sorted(ScriptDirectory.from_config(config).get_heads())
                before = sorted(MigrationContext.configure(conn).get_current_heads())
                if before and before != script_heads:
                    # An existing database somewhere in its history: a user's own state. Leave it.
                    return {
                        "target": target.name,
                        "url": target.masked_url,
                        "heads": before,
                        "script_heads": script_heads,
                        "upgraded": False,
                        "left_alone": True,
                        "inserted": dict.fromkeys(DEMO_TABLES, 0),
                        "counts": _present_counts(conn),
                    }
                if not before:
                    command.upgrade(config, "heads")
                missing = set(DEMO_TABLES) - set(sa.inspect(conn).get_table_names())
                if missing:
                    raise OpsError(
                        f"Target {target.name!r} is not the demo shop schema: after upgrading to its heads it "
                        f"has no table {', '.join(sorted(missing))}.",
                        target=target.name,
                    )
                inserted = {
                    "accounts": _insert_missing(conn, _accounts, "id", data["accounts"]),
                    "orders": _insert_missing(conn, _orders, "id", data["orders"]),
                    "payments": _insert_missing(conn, _payments, "id", data["payments"]),
                    "daily_totals": _insert_missing(conn, _daily_totals, "day", data["daily_totals"]),
                    "refunds": _insert_missing(conn, _refunds, "id", data["refunds"]),
                }
                for table, key, column, rows in (
                    (_accounts, "id", "currency", data["accounts"]),
                    (_accounts, "id", "email", data["accounts"]),
                    (_orders, "id", "note", [r for r in data["orders"] if r["note"]]),
                    (_payments, "id", "method", data["payments"]),
                    (_daily_totals, "day", "card_total", data["daily_totals"]),
                ):
                    _refill(conn, table, key, column, rows)
                if conn.dialect.name == "postgresql":
                    _fix_sequences(conn)
                counts = _present_counts(conn)
                heads = sorted(MigrationContext.configure(conn).get_current_heads())
        except CommandError as exc:
            raise OpsError(
                f"Upgrading target {target.name!r} failed: {mask_url(str(exc))}", target=target.name
            ) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise OpsError(
                f"Seeding target {target.name!r} failed: {mask_url(str(getattr(exc, 'orig', None) or exc))}",
                target=target.name,
            ) from exc
    return {
        "target": target.name,
        "url": target.masked_url,
        "heads": heads,
        "script_heads": script_heads,
        "upgraded": not before,
        "left_alone": False,
        "inserted": inserted,
        "counts": counts,
    }


def _present_counts(conn: sa.Connection) -> dict[str, int]:
    """Row counts of the demo tables that exist at the database's current revision."""
    present = set(sa.inspect(conn).get_table_names())
    return {
        name: conn.execute(sa.select(sa.func.count()).select_from(sa.table(name))).scalar_one()
        for name in DEMO_TABLES
        if name in present
    }
