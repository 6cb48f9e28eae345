"""The build store: builds, their events and their logs (issue 12).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "builds",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("repo_url", sa.Text, nullable=False),
        sa.Column("resolved_ref", sa.Text, nullable=False),
        sa.Column("image_name", sa.Text, nullable=False),
        sa.Column("build_name", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("cached", sa.Boolean, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("queue_position", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("log_bytes", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
    )
    op.create_index("ix_builds_state_id", "builds", ["state", "id"])
    op.create_index("ix_builds_image_name_id", "builds", ["image_name", "id"])
    op.create_index("ix_builds_spec_id", "builds", ["spec", "id"])
    op.create_table(
        "build_events",
        sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("data", sa.Text, nullable=False),
    )
    op.create_table(
        "build_logs",
        sa.Column("build_id", sa.String(32), sa.ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("head", sa.Text, nullable=False),
        sa.Column("tail", sa.Text, nullable=False),
        sa.Column("dropped_bytes", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("build_logs")
    op.drop_table("build_events")
    op.drop_table("builds")
