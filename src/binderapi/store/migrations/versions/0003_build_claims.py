"""Build claims: which replica builds which image, under a lease (issue 13).

Revision ID: 0003_build_claims
Revises: 0002_rate_limits
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_build_claims"
down_revision: str | None = "0002_rate_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "build_claims",
        sa.Column("build_name", sa.Text, primary_key=True),
        sa.Column("build_id", sa.String(32), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("lease_expires", sa.Float, nullable=False),
    )
    op.create_index("ix_build_claims_owner", "build_claims", ["owner"])
    op.create_index("ix_build_claims_lease_expires", "build_claims", ["lease_expires"])


def downgrade() -> None:
    op.drop_table("build_claims")
