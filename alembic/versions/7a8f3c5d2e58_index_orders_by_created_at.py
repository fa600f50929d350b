"""index orders by created_at

Revision ID: 7a8f3c5d2e58
Revises: 6d0e7a4b1f47
Create Date: 2026-01-16 09:05:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "7a8f3c5d2e58"
down_revision: Union[str, Sequence[str], None] = "6d0e7a4b1f47"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_orders_created_at", "orders", ["created_at"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_orders_created_at", table_name="orders")
