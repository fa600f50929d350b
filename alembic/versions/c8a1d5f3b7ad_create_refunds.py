"""create refunds

Revision ID: c8a1d5f3b7ad
Revises: b2e6f4a9d39c
Create Date: 2026-02-09 17:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "c8a1d5f3b7ad"
down_revision: Union[str, Sequence[str], None] = "b2e6f4a9d39c"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "refunds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("payment_id", sa.Integer, sa.ForeignKey("payments.id", name="fk_refunds_payment_id"), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
        sa.CheckConstraint("amount > 0", name="ck_refunds_amount_positive"),
    )


def downgrade() -> None:
    """Downgrade schema: every refund is lost."""
    op.drop_table("refunds")
