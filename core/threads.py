"""Single-threaded sections, for results that must not depend on the machine's core count.

Multi-threaded BLAS and OpenMP reductions (faiss k-means and PCA, numpy matrix products)
sum in an order that depends on how many threads share the work, so the same training
data gives a codebook that differs in its last bits between a 2-core laptop and
``OMP_NUM_THREADS=1``; a different codebook ranks differently, and everything fitted
downstream (a calibration) then differs too. Training steps run inside
:func:`single_threaded` so they are reproducible anywhere; queries stay multi-threaded.

Queries also choose how their cores are shared (:func:`torch_threads`): on a CPU, two
matcher pairs side by side with one thread each finish sooner than the same pairs one
after another with two threads each (``bench/verify_speed.py``, docs/SCALE.md).
"""

from __future__ import annotations

import logging
import os
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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads per calling thread, then restore.

    The setting is process-wide, so two blocks that overlap in time would see each
    other's; queries of one Localizer run one at a time, so theirs do not overlap.
    """
    import torch  # lazy: importing this module must not import torch

    previous = torch.get_num_threads()
    if count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
