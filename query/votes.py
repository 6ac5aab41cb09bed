"""Second retrieval signal: which database images share the most local descriptors with the query.

Why: a VLAD vector summarises a photo in one point, and for a museum of repeated white
stone, glass and blank walls that summary misses right photos that share a few
distinctive details with the query. On the Getty dev queries the photo the exhaustive
seed method found was ranked 443rd and 518th by VLAD for two of its ten sample queries.
Letting every local descriptor of the query vote for the database images that hold its
nearest descriptors ranks a photo of the place the seed found among the top 2 for both,
and recall of a db photo within 5 units rises at 1 from 69.7 % (VLAD) to 81.0 %, at 10
from 90.1 % to 93.0 % (``bench/retrieval.py``).

How: every database descriptor is in an inverted file keyed by image id. A query
descriptor looks up its ``neighbours`` nearest database descriptors in the ``probes``
nearest cells and votes once for each distinct image among them; an image's score is its
number of votes.

Where the inverted file comes from: the segments the database persists
(storage.vote_segments), memory-mapped when a Localizer opens, so opening costs
milliseconds at any size. The snapshot names exactly the segments of its images
(query.snapshot); images no segment holds yet (a database from before revision 0005, or
a first index run stopped before its vote codec) are indexed in memory at open, as
every image was before — slower, but the same answer.
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
from glueloc.storage.vote_segments import add_descriptors

logger = logging.getLogger(__name__)

#: Documented defaults. 10 neighbours per descriptor. 8 probed cells of the database's vote
#: codec (about 1024 descriptors per cell, storage.vote_segments), chosen on 150 held-out
#: Getty database places (``bench/vote_codecs.py``): recall of a near photo at 1/5/10/20 of
#: 80.7/89.3/92.0/94.7 % in ~0.2 s per query, where 4 probes lose R@1 (78.0 %) and 16 gain
#: nothing at twice the time; the in-memory float16 index over 256 codebook cells that
#: queries used before (4 probes) reached 80.0/88.7/92.0/96.0 % in ~0.9 s.
DEFAULT_CONF: dict[str, Any] = {
    "neighbours": 10,  # nearest database descriptors each query descriptor votes for
    "probes": 8,  # inverted-file cells searched per query descriptor
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
    """An inverted file of every database descriptor, in parts, answering "which images share most".

    Each part is one FAISS inverted file (a mapped segment, or the in-memory index of the
    images no segment holds); a query descriptor's nearest neighbours are the best
    ``neighbours`` over all parts, so the split into parts does not change the votes
    beyond the parts' encodings.
    """

    def __init__(self, parts: list[faiss.IndexIVF], conf: Mapping[str, Any] | None = None) -> None:
        self.conf = votes_conf(conf)
        self.parts = [part for part in parts if part.ntotal]
        self.dim = int(parts[0].d) if parts else 0
        self.descriptors = sum(int(part.ntotal) for part in self.parts)

    @classmethod
    def open(cls, segments: list[faiss.IndexIVF], codec: faiss.IndexIVF | None, centroids: np.ndarray,
             reader: FeatureReader, waiting: Iterable[tuple[int, str, str]],
             conf: Mapping[str, Any] | None = None) -> "DescriptorVotes":
        """The (mapped) ``segments`` plus an in-memory part for ``waiting`` images — (id, shard, name) —
        encoded with ``codec`` (or, without one, in cells of the VLAD ``centroids``, float16)."""
        clock = time.perf_counter()
        parts = list(segments)
        waiting = list(waiting)
        if waiting:
            memory = in_memory(codec, centroids)
            pending: list[tuple[int, np.ndarray]] = []
            for image_id, shard, name in waiting:
                pending.append((image_id, reader.descriptors(shard, name)))
                if len(pending) == ADD_BATCH:
                    add_descriptors(memory, pending)
                    pending = []
            add_descriptors(memory, pending)
            parts.append(memory)
            logger.info("descriptor votes: %d image(s) no vote segment holds indexed in memory in %.1f s "
                        "(the next `glueloc index` or `audit --repair` persists them)", len(waiting),
                        time.perf_counter() - clock)
        votes = cls(parts, conf)
        logger.debug("descriptor votes: %d part(s), %d descriptors, open in %.3f s", len(parts), votes.descriptors,
                     time.perf_counter() - clock)
        return votes

    def count(self, descriptors: np.ndarray, exclude: Iterable[int] = ()) -> dict[int, int]:
        """Votes per database image id (images with none are absent); ``exclude`` ids never vote."""
        if len(descriptors) == 0 or not self.parts:
            return {}
        if descriptors.shape[1] != self.dim:
            raise ValueError(f"descriptors of {descriptors.shape[1]} dimensions for a {self.dim}-d vote index")
        excluded = np.fromiter(exclude, dtype=np.int64)
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded)) if len(excluded) else None
        params = faiss.SearchParametersIVF(nprobe=int(self.conf["probes"]), sel=selector)
        k = int(self.conf["neighbours"])
        queries = _unit(descriptors)
        found = [part.search(queries, k, params=params) for part in self.parts]
        if len(found) == 1:
            ids = found[0][1]
        else:
            # The best k of every part's best k: FAISS marks empty slots with id -1 and -inf similarity.
            similarity = np.concatenate([f[0] for f in found], axis=1)
            candidates = np.concatenate([f[1] for f in found], axis=1)
            best = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
            ids = np.take_along_axis(candidates, best, axis=1)
        # One vote per image per query descriptor, however many of its descriptors are near.
        ids = np.sort(ids, axis=1)
        first = np.ones_like(ids, dtype=bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        voted, counts = np.unique(ids[first & (ids >= 0)], return_counts=True)
        return dict(zip(voted.tolist(), counts.tolist()))


def in_memory(codec: faiss.IndexIVF | None, centroids: np.ndarray) -> faiss.IndexIVF:
    """An empty in-memory part: a copy of the database's ``codec``, or without one an inverted
    file over the VLAD codebook's ``centroids`` with float16 codes (what revision 0004 used)."""
    if codec is not None:
        return faiss.clone_index(codec)
    centres = _unit(centroids)
    quantizer = faiss.IndexFlatIP(int(centres.shape[1]))
    quantizer.add(centres)
    index = faiss.IndexIVFScalarQuantizer(quantizer, int(centres.shape[1]), len(centres), faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.is_trained = True  # the codebook's centres are the (already trained) cells
    return index


def ranked(counts: Mapping[int, int]) -> list[int]:
    """Image ids by votes, most first (ties: lower id first, so the order is deterministic)."""
    return sorted(counts, key=lambda image_id: (-counts[image_id], image_id))


def _unit(rows: np.ndarray) -> np.ndarray:
    """float32 unit rows (indexer.vlad's normalisation): inner product = cosine, as FAISS needs."""
    return unit_rows(np.asarray(rows, dtype=np.float32))
