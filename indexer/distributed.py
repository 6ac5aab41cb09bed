"""Feature extraction on a Ray cluster: workers extract and write shards, one committer registers them.

Why Ray: decoding and extracting (~40 ms an image on one core with XFeat, more with the
image embedder) is the part of an index run that needs many machines, and Ray already
schedules, retries and moves the data. glueloc adds only what its stores need:

- Each worker is a Ray actor that loads the database's extractor and embedder once
  (``ExtractionWorker``). A task is one batch of CSV rows: the worker decodes and
  extracts them, writes their shard into ``features/`` of the database directory (on
  storage every worker sees) and publishes it by rename, exactly as the local run does,
  then returns the features, raw embeddings and file facts to the driver.
- The driver (``glueloc index --ray``) stays the single committer: it takes the batches
  in CSV order and commits each as the local run does (``indexer.pipeline``), so image ids,
  FAISS, vote segments, the crash guarantees and the audit are those of a local run.
- A worker that dies is restarted by Ray and its batch retried (``max_restarts``,
  ``max_task_retries``). A shard a dead worker had already published is never named by a
  commit: it is a leftover file that the next run (or ``audit --repair``) deletes, and so is
  every shard of a driver that was killed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from itertools import cycle, islice
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from glueloc.core.errors import BadImageError, GluelocError
from glueloc.core.labels import LabelRow
from glueloc.indexer.extraction import ExtractedBatch, ExtractedImage, extract_image
from glueloc.storage.features import write_shard
from glueloc.vision.embedders import load_recorded_embedder
from glueloc.vision.extractors import load_recorded_extractor
from glueloc.vision.images import load_image

logger = logging.getLogger(__name__)

#: Batches queued per worker beyond the one it runs: enough to keep it busy while the
#: driver commits, few enough that a killed driver wastes little work.
QUEUED_PER_WORKER = 2
#: A worker process restarted this many times (killed, out of memory) before the run fails.
MAX_RESTARTS = 4


@dataclass(frozen=True)
class RayOptions:
    """Where to run: ``address`` is Ray's (``auto``: the cluster this machine is part of, as
    ``ray start`` made it; ``host:port`` or ``ray://host:port``; ``local``: start a cluster
    in this process, for trying it). ``workers``: actors to start (None: one per CPU of the
    cluster); ``cpus_per_worker``: CPUs each reserves (its torch threads)."""

    address: str = "auto"
    workers: int | None = None
    cpus_per_worker: int = 1


@dataclass(frozen=True)
class ModelSpec:
    """A recorded extractor or embedder, as the database names it: what a worker loads."""

    name: str
    version: str
    conf: dict


class ExtractionWorker:
    """Runs in a Ray worker process: the models are loaded once, then batch after batch."""

    def __init__(self, extractor: ModelSpec, embedder: ModelSpec | None, features_dir: str, max_pixels: int,
                 threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.extractor = load_recorded_extractor(extractor.name, extractor.version, extractor.conf)
        self.embedder = None if embedder is None else load_recorded_embedder(embedder.name, embedder.version,
                                                                             embedder.conf)
        self.features_dir = Path(features_dir)
        self.max_pixels = max_pixels

    def pid(self) -> int:
        return os.getpid()

    def extract(self, rows: list[LabelRow]) -> ExtractedBatch:
        if not self.features_dir.is_dir():
            raise GluelocError(f"{self.features_dir} is not visible on this worker: the database directory must be "
                               "on storage every Ray worker mounts at the same path")
        images: list[ExtractedImage] = []
        rejections: list[tuple[LabelRow, str]] = []
        for row in rows:
            try:
                decoded = load_image(row.path, self.max_pixels)
            except BadImageError as exc:
                rejections.append((row, str(exc.named(row.name))))  # the CSV's name, as the local run says it
                continue
            images.append(extract_image(row, decoded, self.extractor, self.embedder))
        shard = write_shard(self.features_dir, [image.entry for image in images]) if images else None
        return ExtractedBatch(images, rejections, shard)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise GluelocError("--ray needs Ray: pip install 'glueloc[ray]'") from None
    return ray


class RayExtraction:
    """A pool of extraction actors on a Ray cluster, for one index run (a context manager)."""

    def __init__(self, options: RayOptions, extractor: ModelSpec, embedder: ModelSpec | None, features_dir: Path,
                 max_pixels: int) -> None:
        self.options = options
        self.extractor, self.embedder = extractor, embedder
        self.features_dir = features_dir
        self.max_pixels = max_pixels
        self._ray: Any = None
        self._started_here = False
        self._empty: tempfile.TemporaryDirectory[str] | None = None
        self.workers: list[Any] = []
        self.worker_pids: list[int] = []  # as started (a restarted worker gets a new one)

    def __enter__(self) -> "RayExtraction":
        ray = _ray()
        self._ray = ray
        if not ray.is_initialized():
            # Ray puts the driver's current directory first on every worker's sys.path unless
            # the job has a working_dir: run from a folder holding a `glueloc` package (a
            # checkout), the workers would import that instead of the installed glueloc. An
            # empty working_dir keeps the workers' imports those of the installed package.
            self._empty = tempfile.TemporaryDirectory(prefix="glueloc-ray-")
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": False, "runtime_env": {"working_dir": self._empty.name}}
            try:
                if self.options.address == "local":
                    ray.init(**kwargs)
                else:
                    ray.init(address=self.options.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise GluelocError(f"cannot reach a Ray cluster at {self.options.address!r}: "
                                   f"{' '.join(str(exc).split())[:200]}") from None
            self._started_here = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = self.options.workers or max(1, cpus // self.options.cpus_per_worker)
        actor = ray.remote(num_cpus=self.options.cpus_per_worker, max_restarts=MAX_RESTARTS,
                           max_task_retries=MAX_RESTARTS)(ExtractionWorker)
        self.workers = [actor.remote(self.extractor, self.embedder, str(self.features_dir), self.max_pixels,
                                     self.options.cpus_per_worker) for _ in range(count)]
        try:
            self.worker_pids = list(ray.get([worker.pid.remote() for worker in self.workers]))
        except ray.exceptions.RayError as exc:
            self.__exit__()
            raise GluelocError(f"the Ray workers could not load the models: {' '.join(str(exc).split())[:300]}") from None
        logger.info("extracting on %d Ray worker(s) of a %d-CPU cluster", count, cpus)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []
        if self._started_here:
            self._ray.shutdown()
        if self._empty is not None:
            self._empty.cleanup()
            self._empty = None

    def batches(self, rows: list[LabelRow], batch_size: int) -> Iterator[ExtractedBatch]:
        """Extract ``rows`` in batches of ``batch_size``, yielded in CSV order as they finish.

        A batch that fails for good (its worker restarted too often, or an error in the
        code) ends the run with that error; every batch yielded before it is committed.
        """
        ray = self._ray
        # Absolute, as every worker sees the images (at the same paths; its cwd is not ours).
        rows = [replace(row, path=row.path.absolute()) for row in rows]
        chunks = (rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
        work = zip(chunks, cycle(self.workers))  # round robin, submitted as the window frees
        window = len(self.workers) * (1 + QUEUED_PER_WORKER)
        pending: deque[Any] = deque(worker.extract.remote(chunk) for chunk, worker in islice(work, window))
        while pending:
            future = pending.popleft()
            try:
                batch = ray.get(future)
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, GluelocError):
                    raise cause from None
                raise GluelocError(f"a Ray extraction task failed: {' '.join(str(exc).split())[:300]}") from None
            pending.extend(worker.extract.remote(chunk) for chunk, worker in islice(work, 1))
            yield batch


def as_spec(name: str, version: str | None, conf: dict | None) -> ModelSpec:
    """The spec a worker loads, from what the database records (store_state)."""
    return ModelSpec(name=name, version=version or "", conf=dict(conf or {}))
