"""Single-threaded sections, for results that must not depend on the machine's core count.

Multi-threaded BLAS and OpenMP reductions (faiss k-means and PCA, numpy matrix products)
sum in an order that depends on how many threads share the work, so the same training
data gives a codebook that differs in its last bits between a 2-core laptop and
``OMP_NUM_THREADS=1``; a different codebook ranks differently, and everything fitted
downstream (a calibration) then differs too. Training steps run inside
:func:`single_threaded` so they are reproducible anywhere; queries stay multi-threaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with one BLAS / OpenMP thread (faiss's own OpenMP pool included)."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(previous)
