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
and ``image_size`` (2,) int32 as (width, height). Global vectors live in their own
shards (``storage.globals``), because a retrained codebook replaces all of them while the
local features stay.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from glueloc.extractors.base import Features
from glueloc.images import sha256_file
from storage.layout import TEMP_PREFIX, atomic_publish

logger = logging.getLogger(__name__)

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".h5"


@dataclass(frozen=True)
class ShardEntry:
    """What one image contributes to a shard."""

    name: str
    features: Features


@dataclass(frozen=True)
class WrittenShard:
    filename: str
    sha256: str


def write_shard(features_dir: Path, entries: list[ShardEntry]) -> WrittenShard:
    """Write ``entries`` to a new shard and publish it atomically; returns its name and hash."""
    token = uuid.uuid4().hex
    final = features_dir / f"{SHARD_PREFIX}{token}{SHARD_SUFFIX}"
    temp = features_dir / f"{TEMP_PREFIX}{final.name}"
    try:
        with h5py.File(temp, "w", libver="latest") as handle:
            for entry in entries:
                group = handle.create_group(entry.name)
                feats = entry.features
                group.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
                group.create_dataset("scores", data=feats.scores.astype(np.float16))
                group.create_dataset("descriptors", data=feats.descriptors.T.astype(np.float16))
                group.create_dataset("image_size", data=np.asarray(feats.image_size, dtype=np.int32))
        digest = sha256_file(temp)
        atomic_publish(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return WrittenShard(filename=final.name, sha256=digest)


def is_shard_filename(name: str) -> bool:
    return name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX)


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


class FeatureReader:
    """Read-only access to registered shards, keeping each file open once.

    Shards are immutable, so an open handle never goes stale; the reader is an object
    (not a module cache) so each query session owns and closes its handles.
    """

    def __init__(self, features_dir: Path) -> None:
        self.features_dir = features_dir
        self._open: dict[str, h5py.File] = {}

    def _file(self, filename: str) -> h5py.File:
        handle = self._open.get(filename)
        if handle is None:
            handle = h5py.File(self.features_dir / filename, "r", locking=False)
            self._open[filename] = handle
        return handle

    def features(self, filename: str, name: str) -> Features:
        return read_group(self._file(filename)[name])

    def descriptors(self, filename: str, name: str) -> np.ndarray:
        """Only the (N, D) descriptors: what aggregation needs, without keypoints."""
        return np.ascontiguousarray(self._file(filename)[name]["descriptors"][()].astype(np.float32).T)

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
