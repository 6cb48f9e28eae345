"""The rate limit's counters, shared by replicas on PostgreSQL (issue 13).

Revision ID: 0002_rate_limits
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_rate_limits"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limits",
        sa.Column("bucket", sa.Text, primary_key=True),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("window_end", sa.Float, nullable=False),
    )
    op.create_index("ix_rate_limits_window_end", "rate_limits", ["window_end"])


def downgrade() -> None:
    op.drop_table("rate_limits")
