"""NetVLAD-style global vectors: VLAD over an image's local descriptors, PCA-whitened.

Why this shape (Arandjelovic et al., "All about VLAD", CVPR 2013; Jegou & Chum, ECCV 2012;
NetVLAD, CVPR 2016, whose layer is initialised exactly like this):

* **cluster centres by k-means** on a sample of database descriptors: the vocabulary of
  the place being mapped, not of some other photo collection;
* **residual sums** per centre (hard assignment, or soft over the nearest centres like
  NetVLAD's soft-assignment layer) keep *how* a descriptor differs from its centre, which
  is what distinguishes two rooms built from the same materials;
* **intra-normalisation** (L2 per centre) stops a few bursty centres (a tiled floor, a
  repeated frame) from dominating the vector;
* **signed square root** then **L2** further damp burstiness;
* **PCA-whitening** (faiss ``PCAMatrix``, eigenvalue power -0.5) decorrelates the
  dimensions and shrinks K*D to a few hundred, then L2 again, so inner product = cosine.

A :class:`VLADCodebook` is immutable and versioned by the database (``codebooks``
table); the same codebook must make the database's and the query's vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from glueloc.core.config import merge_conf
from glueloc.core.threads import single_threaded

logger = logging.getLogger(__name__)

KIND = "vlad:1"

#: PCA-whitening keeps at most one component per this many training images (and at most
#: ``pca_dim``): fewer components than images, so that the database's own photos are
#: not fitted exactly (see _train_codebook). Getty's 4500 photos still get 512.
IMAGES_PER_COMPONENT = 2

#: Defaults chosen on the Getty benchmark (docs/RETRIEVAL.md): with XFeat, K=256, soft
#: assignment and PCA-whitening to 512 trained on every database image reached Recall@10
#: (5 units) of 90.1 %, against 83.1 % for K=64 hard with PCA-256.
DEFAULT_CONF: Mapping[str, Any] = {
    "num_clusters": 256,  # K; the vector has K * D dimensions before PCA
    "assignment": "soft",  # "hard" (nearest centre) or "soft" (softmax over the nearest few)
    "soft_neighbours": 3,  # centres each descriptor is shared among with soft assignment
    "soft_temperature": 0.05,  # softmax temperature on squared distances (unit descriptors)
    "pca_dim": 512,  # output dimension after PCA-whitening; 0 keeps the raw K * D vector
    "whiten": True,  # divide each principal component by sqrt(its eigenvalue)
    "train_images": 5000,  # images sampled to train the codebook (all, if fewer)
    "descriptors_per_image": 200,  # descriptors per sampled image for k-means
    "kmeans_iterations": 20,
    "seed": 0,
}


def vlad_conf(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return merge_conf(DEFAULT_CONF, overrides, "vlad")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class VLADCodebook:
    """Trained centres and the PCA-whitening that follows; see the module docstring."""

    conf: Mapping[str, Any]
    centroids: np.ndarray  # (K, D) float32
    pca_matrix: np.ndarray | None  # (dim, K * D) float32, or None without PCA
    pca_bias: np.ndarray | None  # (dim,) float32

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def descriptor_dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def dim(self) -> int:
        return int(self.pca_matrix.shape[0]) if self.pca_matrix is not None else self.num_clusters * self.descriptor_dim

    def raw(self, descriptors: np.ndarray) -> np.ndarray:
        """The VLAD vector before PCA: residual sums, intra-norm, signed sqrt, L2. Zeros if no descriptors.

        Single-threaded, like :meth:`project`: a vector must not depend on the core count.
        """
        with single_threaded():
            return self._raw(descriptors)

    def _raw(self, descriptors: np.ndarray) -> np.ndarray:
        k, d = self.centroids.shape
        if len(descriptors) == 0:
            return np.zeros(k * d, np.float32)
        x = unit_rows(np.asarray(descriptors, dtype=np.float32))
        dist = (x * x).sum(1)[:, None] - 2.0 * x @ self.centroids.T + (self.centroids**2).sum(1)[None, :]
        if self.conf["assignment"] == "soft":
            m = min(int(self.conf["soft_neighbours"]), k)
            nearest = np.argpartition(dist, m - 1, axis=1)[:, :m]
            logits = -np.take_along_axis(dist, nearest, axis=1) / float(self.conf["soft_temperature"])
            logits -= logits.max(axis=1, keepdims=True)
            weights = np.exp(logits)
            weights /= weights.sum(axis=1, keepdims=True)
            assign = np.zeros_like(dist)
            np.put_along_axis(assign, nearest, weights, axis=1)
        elif self.conf["assignment"] == "hard":
            assign = np.zeros_like(dist)
            assign[np.arange(len(x)), dist.argmin(axis=1)] = 1.0
        else:
            raise ValueError(f"unknown VLAD assignment {self.conf['assignment']!r} (hard or soft)")
        # sum_i a_ik (x_i - c_k) = A^T X - (sum_i a_ik) c_k
        residuals = assign.T @ x - assign.sum(axis=0)[:, None] * self.centroids
        residuals = unit_rows(residuals)  # intra-normalisation (empty centres stay zero)
        vector = residuals.reshape(-1)
        vector = np.sign(vector) * np.sqrt(np.abs(vector))
        return unit_rows(vector).astype(np.float32)

    def project(self, raw: np.ndarray) -> np.ndarray:
        """PCA-whiten (if trained) and L2-normalise rows of raw VLAD vectors (single-threaded:
        BLAS splits this product along its sum by thread count)."""
        with single_threaded():
            return self._project(raw)

    def _project(self, raw: np.ndarray) -> np.ndarray:
        raw = np.atleast_2d(raw).astype(np.float32)
        if self.pca_matrix is None:
            return unit_rows(raw)
        projected = raw @ self.pca_matrix.T + self.pca_bias
        zero = ~raw.any(axis=1)  # an image without descriptors stays the zero vector
        projected[zero] = 0.0
        return unit_rows(projected).astype(np.float32)

    def aggregate(self, descriptors: np.ndarray) -> np.ndarray:
        """One image's global vector (length :attr:`dim`, unit norm unless it has no descriptors);
        both steps in one single-threaded section."""
        with single_threaded():
            return self._project(self._raw(descriptors))[0]


def _sample_rows(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= n else x[rng.choice(len(x), size=n, replace=False)]


def train_codebook(descriptor_sets: Iterable[np.ndarray], conf: Mapping[str, Any]) -> tuple[VLADCodebook, int, int]:
    """Train centres (k-means) and PCA-whitening on the given images' descriptors.

    Returns the codebook, the number of images and of descriptors it was trained on.
    The caller chooses which images (``conf["train_images"]`` of them, sampled). Training
    runs single-threaded so the same images give the same codebook on any machine.
    """
    with single_threaded():
        return _train_codebook(descriptor_sets, conf)


def _train_codebook(descriptor_sets: Iterable[np.ndarray], conf: Mapping[str, Any]) -> tuple[VLADCodebook, int, int]:
    rng = np.random.default_rng(int(conf["seed"]))
    sets = [np.asarray(s, dtype=np.float32) for s in descriptor_sets if len(s)]
    if not sets:
        raise ValueError("no descriptors to train a codebook on")
    sample = np.concatenate([_sample_rows(unit_rows(s), int(conf["descriptors_per_image"]), rng) for s in sets])
    # k-means needs a few dozen points per centre (faiss asks for 39); a small database
    # gets fewer centres instead of noise, and the codebook records the K it really has.
    k = max(1, min(int(conf["num_clusters"]), len(sample) // 39))
    if k < int(conf["num_clusters"]):
        logger.info("%d descriptors: training %d VLAD centres instead of %d", len(sample), k, conf["num_clusters"])
    kmeans = faiss.Kmeans(sample.shape[1], k, niter=int(conf["kmeans_iterations"]), seed=int(conf["seed"]),
                          verbose=False, spherical=False)
    kmeans.train(np.ascontiguousarray(sample))
    centroids = kmeans.centroids.astype(np.float32)
    codebook = VLADCodebook(conf=dict(conf), centroids=centroids, pca_matrix=None, pca_bias=None)
    # Whitening onto N - 1 components would map the N training images onto a regular
    # simplex: any two of them at similarity -1 / (N - 1). New photos would still rank
    # well, but a database photo held out by `glueloc calibrate` could not (R@10 51 %
    # against 86 % refitted without its place, glueloc demo's 160 images), and calibration
    # would fit its model on noise. With at most N / 2 components the database's own
    # photos rank about as new ones do (84 % against 86 %) and new ones as well as with N - 1
    # (docs/RETRIEVAL.md, "How many components a small database whitens onto").
    out_dim = min(int(conf["pca_dim"]), len(sets) // IMAGES_PER_COMPONENT, codebook.dim)
    if int(conf["pca_dim"]) > 0 and out_dim >= 8:
        raws = np.stack([codebook._raw(s) for s in sets])  # already single-threaded (train_codebook)
        pca = faiss.PCAMatrix(raws.shape[1], out_dim, -0.5 if conf["whiten"] else 0.0)
        pca.train(np.ascontiguousarray(raws))
        matrix = faiss.vector_to_array(pca.A).reshape(out_dim, raws.shape[1]).astype(np.float32)
        bias = faiss.vector_to_array(pca.b).astype(np.float32)
        codebook = VLADCodebook(conf=dict(conf), centroids=centroids, pca_matrix=matrix, pca_bias=bias)
    elif int(conf["pca_dim"]) > 0:
        logger.warning("only %d training images: VLAD kept without PCA (needs at least %d)", len(sets),
                       8 * IMAGES_PER_COMPONENT)
    return codebook, len(sets), len(sample)
