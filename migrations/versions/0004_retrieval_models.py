"""Image embeddings and the retrieval models a database learns from its own labels.

A database created from now on records an image embedder (``store_state.embedder*``):
each feature shard then also holds every image's raw embedding. The projection learned
from the labels (``indexer.learn``) is an immutable, content-named file registered in
``retrieval_models`` with what it was trained on, how long it took and its held-out
recall; ``store_state.model_id`` names the current one and ``model_faiss_*`` the FAISS
file of its vectors. A calibration records the model whose ranking its shortlists held.
Databases from earlier revisions keep ``embedder`` NULL and answer as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retrieval_models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("filename", sa.String(128), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("embedder", sa.String(64), nullable=False),
        sa.Column("embedder_version", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("input_dim", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("radius", sa.Float(), nullable=False),
        sa.Column("trained_images", sa.Integer(), nullable=False),
        sa.Column("positives", sa.Integer(), nullable=False),
        sa.Column("held_out_images", sa.Integer(), nullable=False),
        sa.Column("held_out", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("peak_rss_mb", sa.Float(), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(sa.Column("embedder", sa.String(64), nullable=True))
        batch.add_column(sa.Column("embedder_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("embedder_config", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("model_faiss_file", sa.String(128), nullable=True))
        batch.add_column(sa.Column("model_faiss_count", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key("fk_store_state_model_id", "retrieval_models", ["model_id"], ["id"])
    with op.batch_alter_table("calibrations") as batch:
        batch.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_calibrations_model_id", "retrieval_models", ["model_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("calibrations") as batch:
        batch.drop_constraint("fk_calibrations_model_id", type_="foreignkey")
        batch.drop_column("model_id")
    with op.batch_alter_table("store_state") as batch:
        batch.drop_constraint("fk_store_state_model_id", type_="foreignkey")
        for column in ("model_faiss_count", "model_faiss_file", "model_id", "embedder_config", "embedder_version",
                       "embedder"):
            batch.drop_column(column)
    op.drop_table("retrieval_models")
