"""The catalogue's schema, as SQLAlchemy 2 ORM classes.

The catalogue (SQLite by default, or PostgreSQL) is the source of truth: a row exists only once the features it points to are
complete on disk, and each row says which shard holds them. The schema itself is owned
by the Alembic migrations in ``migrations/``; these classes must match the latest
revision (a test checks that the migrated schema and these models agree).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class IndexRun(Base):
    """One invocation of ``glueloc index`` (or a repair): the audit trail."""

    __tablename__ = "index_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    command: Mapped[str] = mapped_column(String(32))  # "index", "repair", ...
    arguments: Mapped[dict] = mapped_column(JSON)  # the CLI arguments as given
    images_dir: Mapped[str | None] = mapped_column(Text)  # absolute path, for deep audits
    added: Mapped[int] = mapped_column(default=0)
    skipped: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    updated: Mapped[int] = mapped_column(default=0)  # coordinate changes accepted
    outcome: Mapped[str] = mapped_column(String(32), default="running")
    message: Mapped[str | None] = mapped_column(Text)
    glueloc_version: Mapped[str] = mapped_column(String(32))

    rejections: Mapped[list[Rejection]] = relationship(back_populates="run")


class Rejection(Base):
    """An input row an index run refused, with the one-line reason it printed."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"), index=True)
    name: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)

    run: Mapped[IndexRun] = relationship(back_populates="rejections")


class FeatureShard(Base):
    """One immutable HDF5 file holding the features of one committed batch."""

    __tablename__ = "feature_shards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    num_images: Mapped[int]
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Image(Base):
    """One indexed database image and where it was taken."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name", name="uq_images_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)  # path relative to the images folder, '/'-separated
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # The file's size and mtime when it was hashed: a re-run that finds both unchanged
    # skips re-hashing it (NULL: indexed before schema 0005, hashed next time).
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int]
    height: Mapped[int]
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    extractor: Mapped[str] = mapped_column(String(64))
    extractor_version: Mapped[str] = mapped_column(String(32))
    num_keypoints: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="indexed")
    shard_id: Mapped[int] = mapped_column(ForeignKey("feature_shards.id"), index=True)
    # The global vector of the current codebook; NULL only in a database migrated from
    # revision 0001 until `glueloc reindex --retrain` has run.
    vector_shard_id: Mapped[int | None] = mapped_column(ForeignKey("vector_shards.id"), index=True)
    # The segment of the descriptor-vote index holding its descriptors (storage.vote_segments); NULL
    # until the database has a vote codec (before its first codebook, or migrated from 0004).
    vote_segment_id: Mapped[int | None] = mapped_column(ForeignKey("vote_segments.id"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    shard: Mapped[FeatureShard] = relationship()


class Codebook(Base):
    """A trained global-descriptor model (VLAD centres + PCA-whitening), stored in an immutable file.

    Versioned by id: every vector records the codebook that made it, and only vectors of
    the current codebook (``store_state.codebook_id``) may be in FAISS.
    """

    __tablename__ = "codebooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # "vlad:1"
    config: Mapped[dict] = mapped_column(JSON)  # the aggregation options it was trained with
    num_clusters: Mapped[int]
    descriptor_dim: Mapped[int]
    dim: Mapped[int]  # length of the global vectors it produces
    trained_images: Mapped[int]
    trained_descriptors: Mapped[int]
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class VectorShard(Base):
    """One immutable HDF5 file of global vectors (one group per image), made by one codebook."""

    __tablename__ = "vector_shards"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    codebook_id: Mapped[int] = mapped_column(ForeignKey("codebooks.id"), index=True)
    num_images: Mapped[int]
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class VoteCodec(Base):
    """How the descriptor-vote index encodes descriptors: its coarse cells and compressed code.

    Trained on a sample of the stored local descriptors (not tied to the VLAD codebook,
    so a retrained codebook leaves the vote index as it is); the row says
    how many cells it has and how many descriptors the database held then, so an auditor
    sees why, and the next writer knows when the database has outgrown it (storage.vote_segments).
    """

    __tablename__ = "vote_codecs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict] = mapped_column(JSON)  # storage.vote_segments options it was trained with
    cells: Mapped[int]
    trained_descriptors: Mapped[int]  # the sample it was trained on
    database_descriptors: Mapped[int] = mapped_column(BigInteger)  # descriptors in the database when it was trained
    seconds: Mapped[float] = mapped_column(Float)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class VoteSegment(Base):
    """One immutable file of encoded descriptors of some images, made with one vote codec."""

    __tablename__ = "vote_segments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    codec_id: Mapped[int] = mapped_column(ForeignKey("vote_codecs.id"), index=True)
    num_images: Mapped[int]
    num_descriptors: Mapped[int]
    # Checked before the file is memory-mapped: reading past the end of a truncated
    # mapped file would kill the process (SIGBUS) instead of raising an error.
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RetrievalModel(Base):
    """A retrieval projection the database learned from its own labels (``indexer.learn``).

    Its file is immutable and named by its content; the row says what it was trained on
    (embedder, images, matching pairs, the near radius), how long it took, and the recall
    each candidate method reached on held-out database places, so an auditor can see why
    this method was chosen.
    """

    __tablename__ = "retrieval_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # "projection:1"
    method: Mapped[str] = mapped_column(String(32))  # "pca", "lw" or "triplet" (vision.projection)
    embedder: Mapped[str] = mapped_column(String(64))
    embedder_version: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict] = mapped_column(JSON)  # indexer.learn options it was trained with
    input_dim: Mapped[int]
    dim: Mapped[int]
    radius: Mapped[float] = mapped_column(Float)  # near radius: positives lie within it
    trained_images: Mapped[int]
    positives: Mapped[int]  # matching pairs (photos of different capture points within the radius)
    held_out_images: Mapped[int]
    held_out: Mapped[dict] = mapped_column(JSON)  # method -> {"R@k": recall on held-out places}
    seconds: Mapped[float] = mapped_column(Float)
    peak_rss_mb: Mapped[float | None] = mapped_column(Float)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Calibration(Base):
    """A re-ranking model fitted on the database's own held-out capture points (``glueloc calibrate``).

    Its inputs include retrieval similarities, which mean something only for the codebook
    that produced them: a query uses the newest calibration of the current codebook, and
    none after a retrain until ``glueloc calibrate`` runs again.
    """

    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "rerank:1"
    model: Mapped[dict] = mapped_column(JSON)  # query.rerank.RerankModel.to_json()
    options: Mapped[dict] = mapped_column(JSON)  # how the held-out sample was drawn and queried
    metrics: Mapped[dict] = mapped_column(JSON)  # cross-validated error on the held-out places
    held_out: Mapped[int]  # held-out database images (one per sampled capture point)
    images: Mapped[int]  # database images when it was fitted
    codebook_id: Mapped[int] = mapped_column(ForeignKey("codebooks.id"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("retrieval_models.id"))  # the image ranking it saw
    glueloc_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CoordinateChange(Base):
    """A coordinate of an existing image changed on request: never silent, always recorded."""

    __tablename__ = "coordinate_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id"))
    old_x: Mapped[float] = mapped_column(Float)
    old_y: Mapped[float] = mapped_column(Float)
    new_x: Mapped[float] = mapped_column(Float)
    new_y: Mapped[float] = mapped_column(Float)
    changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CatalogueOwner(Base):
    """The one database directory this catalogue belongs to (``storage.catalogue``).

    Its id is also in the directory's ``catalogue.json``; an open checks that both agree,
    so two directories can never share one catalogue (each would delete the other's files
    as garbage). Empty for the default catalogue, the SQLite file inside the directory.
    """

    __tablename__ = "catalogue_owner"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    directory_id: Mapped[str] = mapped_column(String(64))
    bound_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class StoreState(Base):
    """The single row that ties the database to its derived stores.

    It fixes the extractor for the whole database (features of different extractors
    cannot be compared) and names the FAISS file that matches the committed images;
    updating it is part of the same transaction that adds images, so the pointer can
    never run ahead of or behind the rows.
    """

    __tablename__ = "store_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    extractor: Mapped[str] = mapped_column(String(64))
    extractor_version: Mapped[str] = mapped_column(String(32))
    extractor_config: Mapped[dict] = mapped_column(JSON)
    matcher: Mapped[str] = mapped_column(String(64))
    matcher_config: Mapped[dict] = mapped_column(JSON)
    global_descriptor: Mapped[str] = mapped_column(String(64))  # name:version of the global vector
    global_dim: Mapped[int]
    global_config: Mapped[dict | None] = mapped_column(JSON)  # VLAD options the next codebook is trained with
    codebook_id: Mapped[int | None] = mapped_column(ForeignKey("codebooks.id"))  # None until trained
    faiss_file: Mapped[str | None] = mapped_column(String(128))
    faiss_count: Mapped[int] = mapped_column(default=0)
    # The image embedder every feature shard's images were embedded with (None: a database
    # from before embeddings; it answers without the image ranking).
    embedder: Mapped[str | None] = mapped_column(String(64))
    embedder_version: Mapped[str | None] = mapped_column(String(32))
    embedder_config: Mapped[dict | None] = mapped_column(JSON)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("retrieval_models.id"))  # None until learned
    model_faiss_file: Mapped[str | None] = mapped_column(String(128))  # FAISS of the model's vectors
    model_faiss_count: Mapped[int] = mapped_column(default=0, server_default="0")
    vote_codec_id: Mapped[int | None] = mapped_column(ForeignKey("vote_codecs.id"))  # None: no persisted vote index
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
