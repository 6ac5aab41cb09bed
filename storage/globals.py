"""Global vectors and the codebooks that make them: immutable HDF5 files in ``vectors/``.

* ``codebook-<id>.h5`` — one trained VLAD codebook (centres, PCA matrix and bias, its
  configuration as JSON), registered in the ``codebooks`` table.
* ``model-<sha256>.h5`` — one retrieval projection learned from the labels
  (``glueloc.vision.projection``), named by its content, registered in ``retrieval_models``;
  with it, in group ``cross_fit``, the same method refitted once per fold of capture
  points (``CrossFit``: what calibration ranks its held-out places with).
* ``global-<id>.h5`` — the global vectors of a group of images, one HDF5 group per image
  name holding ``global_descriptor`` (hloc's layout for retrieval features), all made by
  one codebook (its file name is an attribute), registered in ``vector_shards``.

Like feature shards they are written under a temporary name, fsynced and renamed before
the SQLite transaction that registers them, and never modified afterwards; FAISS is
rebuilt from the vector shards of the current codebook.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np

from glueloc.vision.projection import CrossFit, Projection
from glueloc.vision.vlad import VLADCodebook
from glueloc.storage.layout import Published, publish_hdf5

logger = logging.getLogger(__name__)

CODEBOOK_PREFIX = "codebook-"
VECTORS_PREFIX = "global-"
MODEL_PREFIX = "model-"


def write_model(directory: Path, model: Projection, conf: dict, cross_fit: CrossFit | None = None) -> Published:
    def write(handle: h5py.File) -> None:
        handle.attrs["method"] = model.method
        handle.attrs["config"] = json.dumps(conf, sort_keys=True)
        handle.create_dataset("mean", data=model.mean.astype(np.float32))
        handle.create_dataset("matrix", data=model.matrix.astype(np.float32))
        if cross_fit is not None:
            group = handle.create_group("cross_fit")
            group.create_dataset("points", data=cross_fit.points.astype(np.float64))
            group.create_dataset("fold", data=cross_fit.fold.astype(np.int64))
            group.create_dataset("means", data=np.stack([p.mean for p in cross_fit.projections]).astype(np.float32))
            group.create_dataset("matrices", data=np.stack([p.matrix for p in cross_fit.projections]).astype(np.float32))

    return publish_hdf5(directory, MODEL_PREFIX, write, content_named=True)


def read_model(path: Path) -> Projection:
    """The projection in a model file; a damaged file raises OSError, KeyError or ValueError."""
    with h5py.File(path, "r", locking=False) as handle:
        model = Projection(method=str(handle.attrs["method"]), mean=handle["mean"][()].astype(np.float32),
                           matrix=handle["matrix"][()].astype(np.float32))
    _check_projection(model, path)
    return model


def read_cross_fit(path: Path) -> CrossFit | None:
    """The per-fold projections in a model file; None: it has none (trained before
    models kept them, or with ``cross_fit_folds`` 0). A damaged file raises OSError, KeyError or ValueError."""
    with h5py.File(path, "r", locking=False) as handle:
        method = str(handle.attrs["method"])
        input_dim, dim = handle["matrix"].shape
        if "cross_fit" not in handle:
            return None
        group = handle["cross_fit"]
        means, matrices = group["means"][()].astype(np.float32), group["matrices"][()].astype(np.float32)
        if means.ndim != 2 or matrices.shape != (len(means), input_dim, dim) or means.shape[1] != input_dim:
            raise ValueError(f"model file {path.name} holds cross-fit projections {matrices.shape} / {means.shape} "
                             f"for a {input_dim} x {dim} model")
        projections = tuple(Projection(method, m, w) for m, w in zip(means, matrices))
        cross_fit = CrossFit(group["points"][()].astype(np.float64), group["fold"][()].astype(np.int64), projections)
    for projection in projections:
        _check_projection(projection, path)
    return cross_fit


def _check_projection(model: Projection, path: Path) -> None:
    if model.mean.shape != (model.input_dim,) or not np.isfinite(model.matrix).all() or not np.isfinite(model.mean).all():
        raise ValueError(f"model file {path.name} holds a mean of shape {model.mean.shape} for a "
                         f"{model.matrix.shape} matrix, or non-finite values")


def write_codebook(directory: Path, codebook: VLADCodebook) -> Published:
    def write(handle: h5py.File) -> None:
        handle.attrs["config"] = json.dumps(dict(codebook.conf), sort_keys=True)
        handle.create_dataset("centroids", data=codebook.centroids)
        if codebook.pca_matrix is not None:
            handle.create_dataset("pca_matrix", data=codebook.pca_matrix)
            handle.create_dataset("pca_bias", data=codebook.pca_bias)

    return publish_hdf5(directory, CODEBOOK_PREFIX, write)


def read_codebook(path: Path) -> VLADCodebook:
    with h5py.File(path, "r", locking=False) as handle:
        has_pca = "pca_matrix" in handle
        return VLADCodebook(
            conf=json.loads(handle.attrs["config"]),
            centroids=handle["centroids"][()].astype(np.float32),
            pca_matrix=handle["pca_matrix"][()].astype(np.float32) if has_pca else None,
            pca_bias=handle["pca_bias"][()].astype(np.float32) if has_pca else None,
        )


def write_vectors(directory: Path, codebook_file: str, vectors: dict[str, np.ndarray]) -> Published:
    def write(handle: h5py.File) -> None:
        handle.attrs["codebook"] = codebook_file
        for name, vector in vectors.items():
            handle.create_group(name).create_dataset("global_descriptor", data=vector.astype(np.float32))

    return publish_hdf5(directory, VECTORS_PREFIX, write)


def read_vectors(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(codebook file name, {image name: vector}) of one vector shard."""
    with h5py.File(path, "r", locking=False) as handle:
        found: dict[str, np.ndarray] = {}

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Group) and "global_descriptor" in obj:
                found[name] = obj["global_descriptor"][()].astype(np.float32)

        handle.visititems(visit)
        return str(handle.attrs.get("codebook", "")), found


def read_vector_shapes(path: Path) -> tuple[str, dict[str, tuple[int, ...]]]:
    """(codebook file name, {image name: vector shape}) of one vector shard, reading no vector:
    what a plain audit needs, in memory that does not grow with the database."""
    with h5py.File(path, "r", locking=False) as handle:
        found: dict[str, tuple[int, ...]] = {}

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Group) and "global_descriptor" in obj:
                found[name] = tuple(obj["global_descriptor"].shape)

        handle.visititems(visit)
        return str(handle.attrs.get("codebook", "")), found
