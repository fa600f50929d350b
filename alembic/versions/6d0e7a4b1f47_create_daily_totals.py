"""create daily_totals

First revision of the `reporting` branch.

Revision ID: 6d0e7a4b1f47
Revises: 3c9b6e0f2d14
Create Date: 2026-01-13 08:20:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "6d0e7a4b1f47"
down_revision: Union[str, Sequence[str], None] = "3c9b6e0f2d14"
branch_labels: Union[str, Sequence[str], None] = ("reporting",)
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "daily_totals",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("order_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("amount_total", sa.Numeric(14, 2), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    """Downgrade schema: the daily totals are lost."""
    op.drop_table("daily_totals")
