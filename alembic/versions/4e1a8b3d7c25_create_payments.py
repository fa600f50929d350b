"""create payments

First revision of the `payments` branch.

Revision ID: 4e1a8b3d7c25
Revises: 3c9b6e0f2d14
Create Date: 2026-01-12 11:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "4e1a8b3d7c25"
down_revision: Union[str, Sequence[str], None] = "3c9b6e0f2d14"
branch_labels: Union[str, Sequence[str], None] = ("payments",)
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id", name="fk_payments_order_id"), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("paid_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
    )
    op.create_index("ix_payments_order_id", "payments", ["order_id"])


def downgrade() -> None:
    """Downgrade schema: every payment is lost."""
    op.drop_index("ix_payments_order_id", table_name="payments")
    op.drop_table("payments")
