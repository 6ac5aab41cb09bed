"""The descriptor-vote index on disk: a trained codec and immutable, memory-mapped segments.

Why on disk: built in memory when a query opened (revision 0004 and before), the index
cost about 8 s and 0.6 GB for Getty's 4.6 M descriptors on every open, and would cost
minutes and hundreds of gigabytes at a million images. Written once at index time and
memory-mapped at open (FAISS ``IO_FLAG_MMAP``), opening costs milliseconds whatever the
size, and the operating system pages in only the cells a query probes.

What is stored:

* the **codec** (``votecodec-<sha256>.index``): an empty, trained FAISS inverted file —
  its coarse cells (k-means of a sample of the stored descriptors; their number grows
  with the database, :func:`cells_for`) and its compressed code (an 8-bit scalar
  quantizer trained on the same sample, half the bytes of float16). Learned from the
  descriptors alone, so a retrained VLAD codebook leaves it as it is;
* **segments** (``votes-<sha256>.index``): the codec plus the encoded descriptors of
  some images, keyed by image id. A segment is immutable; new images go into new
  segments, and small segments are merged into larger ones (:func:`merge_segments`), so
  a build writes each descriptor a few times rather than once per batch.

Both are content-named and published by rename before the SQL commit that names them
(``vote_codecs``, ``vote_segments``, ``images.vote_segment_id``); the indexer owns when
they are written (``indexer.vote_index``), the query side how they are searched
(``query.votes``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from glueloc.storage.layout import Published, publish_file
from glueloc.vision.vlad import unit_rows

logger = logging.getLogger(__name__)

CODEC_PREFIX = "votecodec-"
SEGMENT_PREFIX = "votes-"
SUFFIX = ".index"

#: Documented defaults. ``per_cell``: descriptors per coarse cell the codec aims at, so a
#: query probes a number of descriptors that does not grow with the database (cells are
#: a power of two between ``min_cells`` and ``max_cells``). ``code``: "sq8" (64 bytes per
#: 64-d descriptor) or "fp16". The choice was measured on held-out Getty database places
#: (docs/RETRIEVAL.md, ``bench/vote_codecs.py``).
DEFAULT_CONF: dict[str, Any] = {
    "code": "sq8",
    "per_cell": 1024,
    "min_cells": 256,
    "max_cells": 16_384,  # k-means of more cells costs more than this machine's minutes (docs/SCALE.md)
    "train_per_cell": 64,  # sample the cells and the quantizer are trained on, per cell ...
    "min_train": 65_536,  # ... but no fewer descriptors than this
    "max_train": 1_048_576,  # ... and no more
    "kmeans_iterations": 10,
    "seed": 0,
}
CODES = {"sq8": faiss.ScalarQuantizer.QT_8bit, "fp16": faiss.ScalarQuantizer.QT_fp16}
#: The database may hold this many times the descriptors its codec was trained for before
#: the next writer trains a codec with more cells (and rebuilds the segments): each
#: descriptor is then re-encoded a bounded number of times over the database's life.
GROWTH = 4


def codec_conf(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The default configuration with ``overrides`` applied; unknown keys and codes are refused."""
    unknown = set(overrides or {}) - set(DEFAULT_CONF)
    if unknown:
        raise ValueError(f"unknown vote codec option(s): {', '.join(sorted(unknown))}")
    conf = {**DEFAULT_CONF, **(overrides or {})}
    if conf["code"] not in CODES:
        raise ValueError(f"unknown vote code {conf['code']!r} ({', '.join(CODES)})")
    return conf


def cells_for(descriptors: int, conf: Mapping[str, Any]) -> int:
    """Coarse cells for a database of ``descriptors``: at least ``per_cell`` each, a power of two."""
    wanted = max(1, descriptors // int(conf["per_cell"]))
    cells = 1 << int(math.floor(math.log2(wanted)))
    return int(min(max(cells, int(conf["min_cells"])), int(conf["max_cells"])))


def train_size(cells: int, conf: Mapping[str, Any]) -> int:
    """Descriptors to train ``cells`` cells on (k-means wants tens per cell)."""
    return int(min(max(cells * int(conf["train_per_cell"]), int(conf["min_train"])), int(conf["max_train"])))


def outgrown(cells: int, database_descriptors: int, descriptors_now: int, conf: Mapping[str, Any]) -> bool:
    """Whether the database has grown past its codec (:data:`GROWTH`) and would get more cells."""
    return descriptors_now > GROWTH * max(1, database_descriptors) and cells_for(descriptors_now, conf) > cells


def train_codec(sample: np.ndarray, cells: int, conf: Mapping[str, Any]) -> faiss.IndexIVF:
    """An empty inverted file with ``cells`` k-means cells and a quantizer trained on ``sample``.

    Fewer sample rows than ``cells`` would leave cells without a centre: the cells are
    then cut to the sample (a tiny database needs few anyway).
    """
    rows = unit_rows(np.ascontiguousarray(sample, dtype=np.float32))
    cells = int(min(cells, max(1, len(rows))))
    dim = int(rows.shape[1])
    kmeans = faiss.Kmeans(dim, cells, niter=int(conf["kmeans_iterations"]), seed=int(conf["seed"]), spherical=True,
                          max_points_per_centroid=max(1, len(rows) // cells + 1))
    kmeans.train(rows)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(unit_rows(kmeans.centroids))
    codec = faiss.IndexIVFScalarQuantizer(quantizer, dim, cells, CODES[conf["code"]], faiss.METRIC_INNER_PRODUCT)
    codec.own_fields = True
    quantizer.this.disown()
    codec.train(rows)
    codec.is_trained = True
    return codec


def encode(codec: faiss.IndexIVF, images: Sequence[tuple[int, np.ndarray]]) -> faiss.IndexIVF:
    """A new segment: a copy of ``codec`` holding the descriptors of ``images`` (id, (N, D))."""
    segment = faiss.clone_index(codec)
    add_descriptors(segment, images)
    return segment


def add_descriptors(index: faiss.IndexIVF, images: Sequence[tuple[int, np.ndarray]]) -> None:
    """Add the unit-normalised descriptors of several images, keyed by image id, in one FAISS call
    (one call per image is slower). A featureless image adds nothing and never gets a vote."""
    for _, descriptors in images:
        if len(descriptors) and descriptors.shape[1] != index.d:
            raise ValueError(f"descriptors of {descriptors.shape[1]} dimensions for a {index.d}-d vote index")
    described = [(image_id, d) for image_id, d in images if len(d)]
    if described:
        vectors = unit_rows(np.concatenate([d for _, d in described]).astype(np.float32))
        ids = np.concatenate([np.full(len(d), image_id, dtype=np.int64) for image_id, d in described])
        index.add_with_ids(vectors, ids)


def merge_segments(codec: faiss.IndexIVF, paths: Sequence[Path], drop: np.ndarray | None = None) -> faiss.IndexIVF:
    """One segment holding every descriptor of the segments at ``paths`` (read whole, not mapped:
    FAISS moves the entries out of each), without those of the image ids in ``drop``."""
    merged = faiss.clone_index(codec)
    for path in paths:
        part = faiss.read_index(str(path))
        if drop is not None and len(drop):
            part.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(drop, dtype=np.int64)))
        merged.merge_from(part, 0)
    return merged


def write_index(vectors_dir: Path, prefix: str, index: faiss.Index) -> Published:
    """Write ``index`` to a new content-named file (temporary name, fsync, rename)."""
    return publish_file(vectors_dir, prefix, SUFFIX, lambda path: faiss.write_index(index, str(path)),
                        content_named=True)


def read_codec(path: Path) -> faiss.IndexIVF:
    """The trained, empty codec (small: its cells and quantizer only)."""
    return _inverted_file(faiss.read_index(str(path)), path)


def open_segment(path: Path) -> faiss.IndexIVF:
    """A segment, memory-mapped read-only: opening reads its header and cells, not its codes."""
    return _inverted_file(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY), path)


def _inverted_file(index: faiss.Index, path: Path) -> faiss.IndexIVF:
    # read_index already returns the concrete class, and owns it: a second proxy of the same
    # object (faiss.extract_index_ivf) would not keep it alive once this one is collected.
    if not isinstance(index, faiss.IndexIVF):
        raise RuntimeError(f"{path.name} holds a {type(index).__name__}, not an inverted file")
    return index


def segment_ids(index: faiss.IndexIVF) -> np.ndarray:
    """Every image id a segment holds a descriptor of (distinct, sorted): what the audit checks."""
    lists = index.invlists
    found = [faiss.rev_swig_ptr(lists.get_ids(c), lists.list_size(c)).copy()
             for c in range(index.nlist) if lists.list_size(c)]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
