"""add accounts.currency

The branch point of the history: `payments` and `reporting` both start here.

Revision ID: 3c9b6e0f2d14
Revises: 2a7d4c81e5b3
Create Date: 2026-01-08 14:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "3c9b6e0f2d14"
down_revision: Union[str, Sequence[str], None] = "2a7d4c81e5b3"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("accounts", sa.Column("currency", sa.String(3), nullable=False, server_default="EUR"))


def downgrade() -> None:
    """Downgrade schema: the accounts' currencies are lost."""
    # A plain DROP COLUMN (SQLite >= 3.35 has it natively) rather than a batch
    # table rebuild, so the downgrade also renders in offline --sql mode.
    op.drop_column("accounts", "currency")
