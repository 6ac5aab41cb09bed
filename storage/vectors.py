"""The FAISS index of global vectors: a derived cache, published atomically.

FAISS ids are SQLite image ids. Up to ``exact_limit`` vectors the index is exact
(``IndexFlatIP``: brute force is milliseconds at that size and never misses); beyond it,
an HNSW graph keeps search sub-linear at a small recall cost. The index file is never overwritten in place: each
change is written to a new file (temporary name, fsync, rename) and the new name is
stored in ``store_state`` in the same SQLite transaction that adds the images, so the
committed catalogue always names a FAISS file that matches it. Because every global
vector is also kept in the HDF5 shards, the index can always be rebuilt from them.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import faiss
import numpy as np

from glueloc.core.threads import single_threaded
from glueloc.storage.layout import TEMP_PREFIX, atomic_publish

logger = logging.getLogger(__name__)

INDEX_PREFIX = "faiss-"
INDEX_SUFFIX = ".index"
#: Vectors up to which search stays exact; past it the index becomes HNSW.
DEFAULT_EXACT_LIMIT = 100_000
HNSW_NEIGHBOURS = 32


class VectorIndex:
    """Exact inner-product search over L2-normalised vectors, keyed by image id."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def empty(cls, dim: int, approximate: bool = False) -> "VectorIndex":
        if approximate:
            inner: faiss.Index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efSearch = 128
        else:
            inner = faiss.IndexFlatIP(dim)
        return cls(faiss.IndexIDMap2(inner))

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, exact_limit: int = DEFAULT_EXACT_LIMIT) -> "VectorIndex":
        index = cls.empty(dim, approximate=len(ids) > exact_limit)
        if len(ids):
            index.add(ids, vectors)
        return index

    @property
    def approximate(self) -> bool:
        return not isinstance(faiss.downcast_index(self.index.index), faiss.IndexFlat)

    @classmethod
    def load(cls, path: Path) -> "VectorIndex":
        return cls(faiss.read_index(str(path)))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def vectors(self) -> np.ndarray:
        """All stored vectors, in the order of :meth:`ids`."""
        return self.index.index.reconstruct_n(0, self.count) if self.count else np.zeros((0, self.dim), np.float32)

    def similarities(self, ids: list[int], vector: np.ndarray) -> list[float]:
        """Inner product of ``vector`` with the stored vectors of ``ids`` (each id must be stored)."""
        query = np.asarray(vector, dtype=np.float32).ravel()
        return [float(self.index.reconstruct(int(i)) @ query) for i in ids]

    def add(self, ids: np.ndarray, vectors: np.ndarray, exact_limit: int = DEFAULT_EXACT_LIMIT) -> "VectorIndex":
        """Add vectors; returns the index to use from now on (a new HNSW one past ``exact_limit``)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        # HNSW links inserted by parallel threads differ with the thread count; one thread
        # makes the graph, and so every ranking through it, the same on any machine.
        with single_threaded():
            if not self.approximate and self.count + len(ids) > exact_limit:
                grown = VectorIndex.empty(self.dim, approximate=True)
                grown.index.add_with_ids(self.vectors(), self.ids())
                grown.index.add_with_ids(vectors, ids)
                return grown
            self.index.add_with_ids(vectors, ids)
        return self

    def remove(self, ids: np.ndarray) -> "VectorIndex":
        """Remove ids; returns the index to use (HNSW cannot delete, so it is rebuilt without them)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.approximate:
            self.index.remove_ids(ids)
            return self
        keep = ~np.isin(self.ids(), ids)
        return VectorIndex.build(self.ids()[keep], self.vectors()[keep], self.dim, exact_limit=-1)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, ids) per query row; ids are -1 where fewer exist."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        return self.index.search(vectors, min(k, max(self.count, 1)))

    def save_new(self, vectors_dir: Path) -> str:
        """Write this index to a new file, atomically; returns the file name."""
        final = vectors_dir / f"{INDEX_PREFIX}{uuid.uuid4().hex}{INDEX_SUFFIX}"
        temp = vectors_dir / f"{TEMP_PREFIX}{final.name}"
        try:
            faiss.write_index(self.index, str(temp))
            atomic_publish(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return final.name
