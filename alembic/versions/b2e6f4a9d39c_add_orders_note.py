"""add orders.note

Revision ID: b2e6f4a9d39c
Revises: a7d3b8c2e18b
Create Date: 2026-02-02 11:25:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "b2e6f4a9d39c"
down_revision: Union[str, Sequence[str], None] = "a7d3b8c2e18b"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("orders", sa.Column("note", sa.Text, nullable=True))


def downgrade() -> None:
    """Downgrade schema: the order notes are lost."""
    op.drop_column("orders", "note")
