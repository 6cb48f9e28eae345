"""The warm pool's servers and images, and the launch quota's slots, shared by replicas (issue 13).

Revision ID: 0004_warm_pool
Revises: 0003_build_claims
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_warm_pool"
down_revision: str | None = "0003_build_claims"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "warm_servers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("image", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("lease_expires", sa.Float, nullable=False),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("server_name", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("token", sa.Text, nullable=False),
        sa.Column("ready_at", sa.Float, nullable=True),
        sa.Column("marked_at", sa.Float, nullable=True),
    )
    op.create_index("ix_warm_servers_image_state", "warm_servers", ["image", "state"])
    op.create_table(
        "warm_images",
        sa.Column("image", sa.Text, primary_key=True),
        sa.Column("launches", sa.Integer, nullable=False),
        sa.Column("last_launch", sa.Float, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("repo_quota", sa.Integer, nullable=False),
    )
    op.create_table(
        "launch_slots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("repo", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_launch_slots_repo", "launch_slots", ["repo"])


def downgrade() -> None:
    op.drop_table("launch_slots")
    op.drop_table("warm_images")
    op.drop_table("warm_servers")
