"""add daily_totals.card_total

Needs payments.method, so it depends on the `payments` branch.
Data migration: backfills the card total of every existing day.

Revision ID: 8e2b9d6a3c69
Revises: 7a8f3c5d2e58
Create Date: 2026-01-20 13:40:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "8e2b9d6a3c69"
down_revision: Union[str, Sequence[str], None] = "7a8f3c5d2e58"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = "5b6c2f9e0a36"


def upgrade() -> None:
    """Upgrade schema and backfill card totals from payments."""
    op.add_column("daily_totals", sa.Column("card_total", sa.Numeric(14, 2), nullable=False, server_default="0"))
    # date() exists on both PostgreSQL and SQLite.
    op.execute(
        "UPDATE daily_totals SET card_total = ("
        " SELECT COALESCE(SUM(p.amount), 0) FROM payments p JOIN orders o ON o.id = p.order_id"
        " WHERE p.method = 'card' AND date(o.created_at) = daily_totals.day)"
    )


def downgrade() -> None:
    """Downgrade schema: the card totals are lost."""
    op.drop_column("daily_totals", "card_total")
