"""Immutable HDF5 feature shards, in hloc's features-file layout.

Why shards: a process killed while writing an HDF5 file can leave the whole file
unreadable, so glueloc never modifies an HDF5 file that SQLite already references.
Each committed batch gets its own shard, written under a temporary name, fsynced and
renamed into place *before* the SQLite transaction that registers it; a crash at any
point leaves either a complete registered shard or an unregistered file that the next
writer deletes.

Layout (hloc's, so hloc tools can read a shard directly): one group per image name,
holding ``keypoints`` (N, 2) float32 in original-image pixels, ``scores`` (N,)
float16, ``descriptors`` (D, N) float16 — transposed, as hloc stores them —,
and ``image_size`` (2,) int32 as (width, height); in a database with an image embedder
also ``embedding`` (D,) float16, the image's raw embedding (``glueloc.vision.embedders``),
which an index run computes from the same decoded pixels. Global vectors live in their own
shards (``storage.globals``), because a retrained codebook replaces all of them while the
local features stay.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from glueloc.core.errors import DatabaseError
from glueloc.vision.extractors.base import Features
from glueloc.storage.layout import Published, publish_hdf5

logger = logging.getLogger(__name__)

SHARD_PREFIX = "shard-"
#: Shard files a reader keeps open at once (a query verifies ~15 candidates; an audit or a
#: rebuild reads shard after shard): far below the usual limit of 1024 open files.
DEFAULT_MAX_OPEN = 64
#: The dataset of an image group that holds its raw image embedding.
EMBEDDING = "embedding"


@dataclass(frozen=True)
class ShardEntry:
    """What one image contributes to a shard."""

    name: str
    features: Features
    embedding: np.ndarray | None = None  # the raw image embedding, when the database has an embedder


def write_shard(features_dir: Path, entries: list[ShardEntry]) -> Published:
    """Write ``entries`` to a new shard and publish it atomically; returns its name and hash."""

    def write(handle: h5py.File) -> None:
        for entry in entries:
            group = handle.create_group(entry.name)
            feats = entry.features
            group.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
            group.create_dataset("scores", data=feats.scores.astype(np.float16))
            group.create_dataset("descriptors", data=feats.descriptors.T.astype(np.float16))
            group.create_dataset("image_size", data=np.asarray(feats.image_size, dtype=np.int32))
            if entry.embedding is not None:
                group.create_dataset(EMBEDDING, data=np.asarray(entry.embedding, dtype=np.float16))

    return publish_hdf5(features_dir, SHARD_PREFIX, write)


def image_groups(handle: h5py.File) -> list[str]:
    """Names of all image groups in an open shard (names may contain '/', as in hloc)."""
    names: list[str] = []

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Group) and "keypoints" in obj:
            names.append(name)

    handle.visititems(visit)
    return names


def read_group(group: h5py.Group) -> Features:
    """The features of one image group."""
    keypoints = group["keypoints"][()].astype(np.float32)
    descriptors = group["descriptors"][()].astype(np.float32).T
    features = Features(
        keypoints=keypoints,
        scores=group["scores"][()].astype(np.float32),
        descriptors=np.ascontiguousarray(descriptors),
        image_size=tuple(int(v) for v in group["image_size"][()]),  # type: ignore[arg-type]
    )
    return features


@contextmanager
def _damage_named(filename: str, name: str) -> Iterator[None]:
    """A shard the catalogue names but that is gone or unreadable is damage to the database:
    say which and how to repair it, in one line, instead of an h5py traceback."""
    try:
        yield
    except (OSError, KeyError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise DatabaseError(f"feature shard {filename} is missing or unreadable for {name} ({type(exc).__name__}: "
                            f"{detail}); run `glueloc audit --repair`") from exc


class FeatureReader:
    """Read-only access to registered shards, keeping up to ``max_open`` files open.

    Shards are immutable, so an open handle never goes stale; the reader is an object
    (not a module cache) so each query session owns and closes its handles. The handles
    are capped, least recently used closed first: one handle per 32-image shard would hit
    the usual limit of 1024 open files near 32k images (h5py then reports a damaged shard).
    """

    def __init__(self, features_dir: Path, max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.features_dir = features_dir
        self.max_open = max(1, max_open)
        self._open: OrderedDict[str, h5py.File] = OrderedDict()

    def _file(self, filename: str) -> h5py.File:
        handle = self._open.get(filename)
        if handle is not None:
            self._open.move_to_end(filename)
            return handle
        handle = h5py.File(self.features_dir / filename, "r", locking=False)
        self._open[filename] = handle
        while len(self._open) > self.max_open:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return handle

    @property
    def open_files(self) -> int:
        return len(self._open)

    def features(self, filename: str, name: str) -> Features:
        with _damage_named(filename, name):
            return read_group(self._file(filename)[name])

    def descriptors(self, filename: str, name: str) -> np.ndarray:
        """Only the (N, D) descriptors: what aggregation needs, without keypoints."""
        with _damage_named(filename, name):
            return np.ascontiguousarray(self._file(filename)[name]["descriptors"][()].astype(np.float32).T)

    def embedding(self, filename: str, name: str) -> np.ndarray:
        """The raw image embedding stored with the image's features (float32)."""
        with _damage_named(filename, name):
            return self._file(filename)[name][EMBEDDING][()].astype(np.float32)

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
