"""Re-ranking calibrations fitted on the database itself.

``glueloc calibrate`` holds out capture points of the database (leave-one-place-out),
runs them through the query path and fits the model that ranks verified candidates and
gives the answer its confidence. Each fit is one row: its parameters, the codebook whose
similarities it was fitted on, and the held-out error it reached, so an auditor can see
which calibration answered a query and how good it was measured to be.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("model", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("held_out", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("codebook_id", sa.Integer(), sa.ForeignKey("codebooks.id"), nullable=False),
        sa.Column("glueloc_version", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_calibrations_codebook_id", "calibrations", ["codebook_id"])


def downgrade() -> None:
    op.drop_index("ix_calibrations_codebook_id", "calibrations")
    op.drop_table("calibrations")
