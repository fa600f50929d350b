"""The seed article's `transfer_funds`, done properly, on the demo `accounts` table.

The article sets SERIALIZABLE, locks both rows with SELECT ... FOR UPDATE,
checks the balance and moves the money, but gives up on the first
serialization failure. Here the same transaction runs through
`run_serializable`, so a 40001/40P01 is retried a bounded number of times.
Rows are locked in id order, so two opposite transfers cannot deadlock on
each other in the common case (a deadlock would still be retried).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import sqlalchemy as sa

from opsapp.services.errors import OpsError
from opsapp.services.isolation import run_serializable


class InsufficientFunds(OpsError):
    """The sender's balance does not cover the amount; nothing was moved."""


_SELECT = sa.text("SELECT id, balance FROM accounts WHERE id IN (:a, :b) ORDER BY id FOR UPDATE")
_UPDATE = sa.text("UPDATE accounts SET balance = balance + :delta WHERE id = :id")


def _transfer_once(conn: sa.Connection, sender_id: int, receiver_id: int, amount: Decimal) -> Decimal:
    rows = {row.id: Decimal(row.balance) for row in conn.execute(_SELECT, {"a": sender_id, "b": receiver_id})}
    missing = {sender_id, receiver_id} - set(rows)
    if missing:
        raise OpsError(f"Unknown account(s): {', '.join(map(str, sorted(missing)))}.")
    if rows[sender_id] < amount:
        raise InsufficientFunds(
            f"Account {sender_id} holds {rows[sender_id]}, less than {amount}.", reason="insufficient_funds"
        )
    conn.execute(_UPDATE, {"delta": -amount, "id": sender_id})
    conn.execute(_UPDATE, {"delta": amount, "id": receiver_id})
    return rows[sender_id] - amount


def transfer_funds(
    engine: sa.engine.Engine,
    sender_id: int,
    receiver_id: int,
    amount: Decimal | int | str,
    *,
    retries: int = 10,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> Decimal:
    """Move `amount` from `sender_id` to `receiver_id` in one SERIALIZABLE transaction.

    Returns the sender's new balance. Raises InsufficientFunds (nothing
    moved), OpsError for an unknown account or a non-positive amount, and the
    database error when serialization failures outlast `retries`.
    """
    amount = Decimal(str(amount))
    if amount <= 0:
        raise OpsError(f"A transfer needs a positive amount, not {amount}.")
    if sender_id == receiver_id:
        raise OpsError("A transfer needs two different accounts.")

    @contextmanager
    def serializable_connection() -> Iterator[sa.Connection]:
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="SERIALIZABLE")

    return run_serializable(
        serializable_connection,
        lambda conn: _transfer_once(conn, sender_id, receiver_id, amount),
        retries=retries,
        on_retry=on_retry,
    )
