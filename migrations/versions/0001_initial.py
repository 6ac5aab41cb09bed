"""Initial schema: images, feature shards, index runs, rejections, coordinate changes, store state.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("images_dir", sa.Text(), nullable=True),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("glueloc_version", sa.String(32), nullable=False),
    )
    op.create_table(
        "rejections",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_rejections_run_id", "rejections", ["run_id"])
    op.create_table(
        "feature_shards",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("filename", sa.String(128), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("extractor", sa.String(64), nullable=False),
        sa.Column("extractor_version", sa.String(32), nullable=False),
        sa.Column("num_keypoints", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("shard_id", sa.Integer(), sa.ForeignKey("feature_shards.id"), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("name", name="uq_images_name"),
    )
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_index("ix_images_shard_id", "images", ["shard_id"])
    op.create_table(
        "coordinate_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id"), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("old_x", sa.Float(), nullable=False),
        sa.Column("old_y", sa.Float(), nullable=False),
        sa.Column("new_x", sa.Float(), nullable=False),
        sa.Column("new_y", sa.Float(), nullable=False),
        sa.Column("changed_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_coordinate_changes_image_id", "coordinate_changes", ["image_id"])
    op.create_table(
        "store_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("extractor", sa.String(64), nullable=False),
        sa.Column("extractor_version", sa.String(32), nullable=False),
        sa.Column("extractor_config", sa.JSON(), nullable=False),
        sa.Column("matcher", sa.String(64), nullable=False),
        sa.Column("matcher_config", sa.JSON(), nullable=False),
        sa.Column("global_descriptor", sa.String(64), nullable=False),
        sa.Column("global_dim", sa.Integer(), nullable=False),
        sa.Column("faiss_file", sa.String(128), nullable=True),
        sa.Column("faiss_count", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("store_state", "coordinate_changes", "images", "feature_shards", "rejections", "index_runs"):
        op.drop_table(table)
