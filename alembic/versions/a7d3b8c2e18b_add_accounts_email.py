"""add accounts.email

Revision ID: a7d3b8c2e18b
Revises: 9c4f1e7b5d7a
Create Date: 2026-01-27 15:10:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "a7d3b8c2e18b"
down_revision: Union[str, Sequence[str], None] = "9c4f1e7b5d7a"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("accounts", sa.Column("email", sa.String(254), nullable=True))
    op.create_index("ux_accounts_email", "accounts", ["email"], unique=True)


def downgrade() -> None:
    """Downgrade schema: the accounts' e-mail addresses are lost."""
    op.drop_index("ux_accounts_email", table_name="accounts")
    op.drop_column("accounts", "email")
