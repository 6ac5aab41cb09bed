"""VLAD codebooks and global-vector shards.

Global vectors move out of the feature shards into their own immutable files, one set
per codebook, so a retrained codebook can replace every vector without touching the
local features. A database indexed at revision 0001 keeps its rows; its vectors (the
interim mean descriptor) belong to no codebook, so audit asks for
`glueloc reindex --retrain` until that has run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "codebooks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("filename", sa.String(128), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("num_clusters", sa.Integer(), nullable=False),
        sa.Column("descriptor_dim", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("trained_images", sa.Integer(), nullable=False),
        sa.Column("trained_descriptors", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "vector_shards",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("filename", sa.String(128), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("codebook_id", sa.Integer(), sa.ForeignKey("codebooks.id"), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_vector_shards_codebook_id", "vector_shards", ["codebook_id"])
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("vector_shard_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_images_vector_shard_id", "vector_shards", ["vector_shard_id"], ["id"])
        batch.create_index("ix_images_vector_shard_id", ["vector_shard_id"])
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(sa.Column("global_config", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("codebook_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_store_state_codebook_id", "codebooks", ["codebook_id"], ["id"])
    # The interim vectors belong to no codebook: retire their FAISS file (the next writer
    # deletes it as unreferenced) so that nothing serves vectors audit cannot vouch for.
    op.execute("UPDATE store_state SET faiss_file = NULL, faiss_count = 0, global_dim = 0, "
               "global_descriptor = 'vlad:1'")


def downgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.drop_constraint("fk_store_state_codebook_id", type_="foreignkey")
        batch.drop_column("codebook_id")
        batch.drop_column("global_config")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_vector_shard_id")
        batch.drop_constraint("fk_images_vector_shard_id", type_="foreignkey")
        batch.drop_column("vector_shard_id")
    op.drop_table("vector_shards")
    op.drop_table("codebooks")
