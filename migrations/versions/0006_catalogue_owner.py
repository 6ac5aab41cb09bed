"""A catalogue knows the one directory it belongs to; counts that outgrow 32 bits are 64-bit.

A catalogue on a server (PostgreSQL) lives apart from its database directory, so the
directory records it in ``catalogue.json`` and the catalogue records the directory's id in
``catalogue_owner`` (``storage.catalogue``); every open checks that both agree. Empty for
the default catalogue, the SQLite file inside its directory.

``vote_segments.size_bytes`` and ``vote_codecs.database_descriptors`` become 64-bit: a
merged segment can pass 2 GiB, and a few million images hold more than 2^31 descriptors.
SQLite stores integers in up to 8 bytes either way; PostgreSQL's INTEGER is 4.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from glueloc.core.errors import DatabaseError

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


#: What the first release of this revision could leave behind on SQLite when it failed
#: (it ran its DDL outside a transaction; ``storage.database.migrating`` now wraps it):
#: empty tables that a complete run creates again.
_LEFTOVERS = ("catalogue_owner", "_alembic_tmp_vote_segments", "_alembic_tmp_vote_codecs")


def _drop_sqlite_leftovers() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    present = set(sa.inspect(bind).get_table_names())
    for table in _LEFTOVERS:
        if table in present:
            if bind.execute(sa.text(f'select count(*) from "{table}"')).scalar_one():
                raise DatabaseError(f"table {table} already exists and holds rows: not a leftover of revision 0006; "
                                    "nothing was changed")
            op.drop_table(table)


def upgrade() -> None:
    _drop_sqlite_leftovers()
    op.create_table(
        "catalogue_owner",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("directory_id", sa.String(64), nullable=False),
        sa.Column("bound_at", sa.DateTime(), nullable=False),
    )
    with op.batch_alter_table("vote_segments") as batch:
        batch.alter_column("size_bytes", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("vote_codecs") as batch:
        batch.alter_column("database_descriptors", type_=sa.BigInteger(), existing_type=sa.Integer(),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("vote_codecs") as batch:
        batch.alter_column("database_descriptors", type_=sa.Integer(), existing_type=sa.BigInteger(),
                           existing_nullable=False)
    with op.batch_alter_table("vote_segments") as batch:
        batch.alter_column("size_bytes", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
    op.drop_table("catalogue_owner")
