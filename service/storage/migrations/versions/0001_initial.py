"""Market bars and the prediction log.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "market_bars",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open", sa.Float(), nullable=False),
        sa.Column("high", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=False),
        sa.Column("close", sa.Float(), nullable=False),
        sa.Column("volume", sa.Float(), nullable=False),
        sa.UniqueConstraint("symbol", "ts", name="uq_market_bars_symbol_ts"),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("direction", sa.String(4), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probability_up", sa.Float(), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("feature_set_version", sa.String(32), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("actual_direction", sa.String(4), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution_source", sa.String(16), nullable=True),
        sa.Column(
            "resolving_bar_id",
            sa.Integer(),
            sa.ForeignKey("market_bars.id", ondelete="SET NULL"),
            nullable=True,
        ),
    )
    op.create_index("ix_predictions_symbol_status", "predictions", ["symbol", "status"])
    op.create_index("ix_predictions_resolved_at", "predictions", ["resolved_at"])


def downgrade() -> None:
    op.drop_index("ix_predictions_resolved_at", table_name="predictions")
    op.drop_index("ix_predictions_symbol_status", table_name="predictions")
    op.drop_table("predictions")
    op.drop_table("market_bars")
