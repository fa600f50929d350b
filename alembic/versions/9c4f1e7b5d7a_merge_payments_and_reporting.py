"""merge payments and reporting

Revision ID: 9c4f1e7b5d7a
Revises: 5b6c2f9e0a36, 8e2b9d6a3c69
Create Date: 2026-01-22 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "9c4f1e7b5d7a"
down_revision: Union[str, Sequence[str], None] = ("5b6c2f9e0a36", "8e2b9d6a3c69")
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    pass


def downgrade() -> None:
    """Downgrade schema."""
    pass
