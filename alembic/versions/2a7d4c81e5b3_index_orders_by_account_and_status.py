"""index orders by account and status

Revision ID: 2a7d4c81e5b3
Revises: 1f3e9a2c4b70
Create Date: 2026-01-06 10:15:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "2a7d4c81e5b3"
down_revision: Union[str, Sequence[str], None] = "1f3e9a2c4b70"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_orders_account_id_status", "orders", ["account_id", "status"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_orders_account_id_status", table_name="orders")
