"""The descriptor-vote index, persisted: a trained codec and immutable segment files.

Until revision 0004 a query built the descriptor-vote index (query.votes) in memory from
every feature shard each time it opened: seconds and gigabytes that grow with the
database. From now on the index lives in ``vectors/``: ``vote_codecs`` records the
trained coarse cells and compressed code (learned from the stored descriptors alone, so a
retrained VLAD codebook leaves it as it is; ``store_state.vote_codec_id`` names the
current one), ``vote_segments`` the immutable, content-named FAISS files that
hold the encoded descriptors, each image pointing to the one segment that holds its
descriptors (``images.vote_segment_id``). A segment is written with the batch whose
images it holds and named in that batch's commit; small segments are merged into larger
ones in later commits. Databases from earlier revisions have none until the next writer
(``glueloc index`` or ``audit --repair``) builds them; their queries index the images no
segment holds in memory, as before.

Images also record their file's size and mtime (``images.file_size``, ``file_mtime_ns``,
read before the bytes were hashed): a re-run skips hashing a file whose name, size and
mtime are unchanged. NULL for images indexed before; the next run that hashes them
records them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vote_codecs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("filename", sa.String(128), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("cells", sa.Integer(), nullable=False),
        sa.Column("trained_descriptors", sa.Integer(), nullable=False),
        sa.Column("database_descriptors", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "vote_segments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("filename", sa.String(128), nullable=False, unique=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("codec_id", sa.Integer(), sa.ForeignKey("vote_codecs.id"), nullable=False, index=True),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("num_descriptors", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("index_runs.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("file_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("file_mtime_ns", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("vote_segment_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_images_vote_segment_id", "vote_segments", ["vote_segment_id"], ["id"])
        batch.create_index("ix_images_vote_segment_id", ["vote_segment_id"])
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(sa.Column("vote_codec_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_store_state_vote_codec_id", "vote_codecs", ["vote_codec_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.drop_constraint("fk_store_state_vote_codec_id", type_="foreignkey")
        batch.drop_column("vote_codec_id")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_vote_segment_id")
        batch.drop_constraint("fk_images_vote_segment_id", type_="foreignkey")
        batch.drop_column("vote_segment_id")
        batch.drop_column("file_mtime_ns")
        batch.drop_column("file_size")
    op.drop_table("vote_segments")
    op.drop_table("vote_codecs")
