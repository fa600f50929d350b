"""add payments.method

Data migration: existing payments become 'card', large ones 'transfer'.

Revision ID: 5b6c2f9e0a36
Revises: 4e1a8b3d7c25
Create Date: 2026-01-15 16:45:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "5b6c2f9e0a36"
down_revision: Union[str, Sequence[str], None] = "4e1a8b3d7c25"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema and backfill the method of existing payments."""
    op.add_column("payments", sa.Column("method", sa.String(20), nullable=False, server_default="card"))
    payments = sa.table("payments", sa.column("method", sa.String), sa.column("amount", sa.Numeric))
    op.execute(payments.update().where(payments.c.amount >= 500).values(method="transfer"))


def downgrade() -> None:
    """Downgrade schema: the payment methods are lost."""
    op.drop_column("payments", "method")
