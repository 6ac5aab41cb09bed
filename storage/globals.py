"""Global vectors and the codebooks that make them: immutable HDF5 files in ``vectors/``.

* ``codebook-<id>.h5`` — one trained VLAD codebook (centres, PCA matrix and bias, its
  configuration as JSON), registered in the ``codebooks`` table.
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

from glueloc.vision.vlad import VLADCodebook
from glueloc.storage.layout import Published, publish_hdf5

logger = logging.getLogger(__name__)

CODEBOOK_PREFIX = "codebook-"
VECTORS_PREFIX = "global-"


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
