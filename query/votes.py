"""Second retrieval signal: which database images share the most local descriptors with the query.

Why: a VLAD vector summarises a photo in one point, and for a museum of repeated white
stone, glass and blank walls that summary misses right photos that share a few
distinctive details with the query. On the Getty dev queries the photo the exhaustive
seed method found was ranked 443rd and 518th by VLAD for two of its ten sample queries.
Letting every local descriptor of the query vote for the database images that hold its
nearest descriptors ranks a photo of the place the seed found among the top 2 for both,
and recall of a db photo within 5 units rises at 1 from 69.7 % (VLAD) to 81.0 %, at 10
from 90.1 % to 93.0 % (``bench/retrieval.py``).

How: all database descriptors go into a FAISS inverted file whose coarse quantizer is
the database's VLAD codebook (its centres already partition this descriptor space, so
nothing new is trained or stored), keyed by image id. A query descriptor looks up its
``neighbours`` nearest database descriptors in the ``probes`` nearest cells and votes
once for each distinct image among them; an image's score is its number of votes.

The index is built from the feature shards of one consistent snapshot when a Localizer
opens (seconds for thousands of images), so it always holds exactly the images the
snapshot's catalogue and FAISS file hold, and it is never written to disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import faiss
import numpy as np

from glueloc.vision.vlad import unit_rows
from glueloc.storage.features import FeatureReader

logger = logging.getLogger(__name__)

#: Documented defaults (Getty dev queries, 2 cores): 10 neighbours per descriptor; 4
#: probed cells of the 256-centre codebook cost ~0.3 s per query and, in a prototype,
#: found a near photo in the top 10 as often as 8 or 16 cells did (0.7-0.8 s).
DEFAULT_CONF: dict[str, Any] = {
    "neighbours": 10,  # nearest database descriptors each query descriptor votes for
    "probes": 4,  # inverted-file cells searched per query descriptor
}
#: Images whose descriptors go into the inverted file in one call while it is built.
ADD_BATCH = 64


def votes_conf(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The default configuration with ``overrides`` applied; unknown keys are refused."""
    unknown = set(overrides or {}) - set(DEFAULT_CONF)
    if unknown:
        raise ValueError(f"unknown descriptor-vote option(s): {', '.join(sorted(unknown))}")
    conf = {**DEFAULT_CONF, **(overrides or {})}
    if int(conf["neighbours"]) < 1 or int(conf["probes"]) < 1:
        raise ValueError("descriptor votes need neighbours >= 1 and probes >= 1")
    return conf


class DescriptorVotes:
    """An inverted file of every database descriptor, answering "which images share most"."""

    def __init__(self, centroids: np.ndarray, conf: Mapping[str, Any] | None = None) -> None:
        self.conf = votes_conf(conf)
        centres = _unit(centroids)
        self.dim = int(centres.shape[1])
        self._quantizer = faiss.IndexFlatIP(self.dim)
        self._quantizer.add(centres)
        # float16 codes: half the memory of float32. The descriptors are stored as float16
        # in the feature shards already, so no precision is lost that the shards still hold.
        self.index = faiss.IndexIVFScalarQuantizer(self._quantizer, self.dim, len(centres),
                                                   faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        self.index.is_trained = True  # the codebook's centres are the (already trained) cells
        self.images = 0

    @classmethod
    def build(cls, reader: FeatureReader, images: Iterable[tuple[int, str, str]], centroids: np.ndarray,
              conf: Mapping[str, Any] | None = None) -> "DescriptorVotes":
        """Index the descriptors of ``images`` — (image id, shard file, name) — read from their shards."""
        clock = time.perf_counter()
        votes = cls(centroids, conf)
        pending: list[tuple[int, np.ndarray]] = []
        for image_id, shard, name in images:
            pending.append((image_id, reader.descriptors(shard, name)))
            if len(pending) == ADD_BATCH:
                votes.add_many(pending)
                pending = []
        votes.add_many(pending)
        logger.info("descriptor votes: %d descriptors of %d images indexed in %.1f s",
                    votes.index.ntotal, votes.images, time.perf_counter() - clock)
        return votes

    def add(self, image_id: int, descriptors: np.ndarray) -> None:
        self.add_many([(image_id, descriptors)])

    def add_many(self, images: list[tuple[int, np.ndarray]]) -> None:
        """Index the descriptors of several images in one FAISS call (one call per image is slower)."""
        for _, descriptors in images:
            if len(descriptors) and descriptors.shape[1] != self.dim:
                raise ValueError(f"descriptors of {descriptors.shape[1]} dimensions for a {self.dim}-d codebook")
        # A featureless image is still indexed: it adds no descriptor and simply never gets a vote.
        described = [(image_id, d) for image_id, d in images if len(d)]
        if described:
            vectors = _unit(np.concatenate([d for _, d in described]))
            ids = np.concatenate([np.full(len(d), image_id, dtype=np.int64) for image_id, d in described])
            self.index.add_with_ids(vectors, ids)
        self.images += len(images)

    def count(self, descriptors: np.ndarray, exclude: Iterable[int] = ()) -> dict[int, int]:
        """Votes per database image id (images with none are absent); ``exclude`` ids never vote."""
        if len(descriptors) == 0 or self.index.ntotal == 0:
            return {}
        excluded = np.fromiter(exclude, dtype=np.int64)
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded)) if len(excluded) else None
        params = faiss.SearchParametersIVF(nprobe=int(self.conf["probes"]), sel=selector)
        _, ids = self.index.search(_unit(descriptors), int(self.conf["neighbours"]), params=params)
        # One vote per image per query descriptor, however many of its descriptors are near.
        ids = np.sort(ids, axis=1)
        first = np.ones_like(ids, dtype=bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        voted, counts = np.unique(ids[first & (ids >= 0)], return_counts=True)
        return dict(zip(voted.tolist(), counts.tolist()))


def ranked(counts: Mapping[int, int]) -> list[int]:
    """Image ids by votes, most first (ties: lower id first, so the order is deterministic)."""
    return sorted(counts, key=lambda image_id: (-counts[image_id], image_id))


def _unit(rows: np.ndarray) -> np.ndarray:
    """float32 unit rows (indexer.vlad's normalisation): inner product = cosine, as FAISS needs."""
    return unit_rows(np.asarray(rows, dtype=np.float32))
