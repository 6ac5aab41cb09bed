"""VLAD aggregation and codebook training: the properties the retrieval design relies on."""

from __future__ import annotations

import numpy as np
import pytest

from glueloc.core.errors import GluelocError
from glueloc.vision.vlad import IMAGES_PER_COMPONENT, VLADCodebook, train_codebook, vlad_conf


def blobs(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float = 0.05) -> np.ndarray:
    picks = centres[rng.integers(len(centres), size=n)]
    return (picks + noise * rng.normal(size=picks.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def trained() -> tuple[VLADCodebook, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    # each "place" uses its own subset of the vocabulary
    sets = [blobs(rng, centres[rng.choice(8, size=3, replace=False)], 150) for _ in range(40)]
    codebook, images, descriptors = train_codebook(sets, vlad_conf({"num_clusters": 8, "pca_dim": 16}))
    assert (images, descriptors) == (40, 40 * 150)
    return codebook, sets


def test_shapes_and_unit_norm(trained: tuple[VLADCodebook, list[np.ndarray]]) -> None:
    codebook, sets = trained
    assert codebook.centroids.shape == (8, 16) and codebook.dim == 16
    raw = codebook.raw(sets[0])
    assert raw.shape == (8 * 16,) and np.isclose(np.linalg.norm(raw), 1.0)
    vector = codebook.aggregate(sets[0])
    assert vector.shape == (16,) and np.isclose(np.linalg.norm(vector), 1.0)
    assert not codebook.aggregate(np.zeros((0, 16), np.float32)).any()  # no descriptors: the zero vector


def test_intra_normalisation_damps_bursts(trained: tuple[VLADCodebook, list[np.ndarray]]) -> None:
    codebook, sets = trained
    base = sets[0]
    bursty = np.concatenate([base, np.repeat(base[:1], 500, axis=0)])  # one structure repeated 500 times
    blocks = codebook.raw(bursty).reshape(8, 16)
    norms = np.linalg.norm(blocks, axis=1)
    used = norms > 0
    # intra-normalisation gives every used centre unit weight before the signed square root,
    # so the repeated structure's centre cannot dominate: block norms stay within 2x
    assert used.sum() >= 2 and norms[used].max() / norms[used].min() < 2.0
    # the residual sums themselves (what intra-normalisation corrects) are dominated by it
    x = bursty / np.linalg.norm(bursty, axis=1, keepdims=True)
    nearest = ((x[:, None, :] - codebook.centroids[None]) ** 2).sum(-1).argmin(1)
    sums = np.array([np.linalg.norm((x[nearest == k] - codebook.centroids[k]).sum(0)) for k in range(8)])
    burst = nearest[-1]
    others = used.copy()
    others[burst] = False
    assert sums[burst] > 5.0 * np.median(sums[others])


def test_same_place_is_closer_than_another(trained: tuple[VLADCodebook, list[np.ndarray]]) -> None:
    codebook, sets = trained
    rng = np.random.default_rng(1)
    a, b = sets[3][:75], sets[3][75:]  # two views of one place
    other = sets[4] if not np.allclose(codebook.raw(sets[4]), codebook.raw(sets[3])) else sets[5]
    va, vb, vo = (codebook.aggregate(x) for x in (a, b, other[rng.permutation(len(other))[:75]]))
    assert va @ vb > va @ vo


def test_permutation_invariant_and_deterministic(trained: tuple[VLADCodebook, list[np.ndarray]]) -> None:
    codebook, sets = trained
    shuffled = sets[2][np.random.default_rng(2).permutation(len(sets[2]))]
    np.testing.assert_allclose(codebook.aggregate(shuffled), codebook.aggregate(sets[2]), atol=1e-5)
    again, _, _ = train_codebook(sets, vlad_conf({"num_clusters": 8, "pca_dim": 16}))
    np.testing.assert_allclose(again.centroids, codebook.centroids)


def test_soft_assignment_spreads_weight(trained: tuple[VLADCodebook, list[np.ndarray]]) -> None:
    codebook, sets = trained
    soft = VLADCodebook(vlad_conf({"assignment": "soft", "soft_neighbours": 3, "soft_temperature": 10.0}),
                        codebook.centroids, None, None)
    hard = VLADCodebook(vlad_conf({"assignment": "hard"}), codebook.centroids, None, None)
    used_soft = (np.linalg.norm(soft.raw(sets[0]).reshape(8, 16), axis=1) > 0).sum()
    used_hard = (np.linalg.norm(hard.raw(sets[0]).reshape(8, 16), axis=1) > 0).sum()
    assert used_soft > used_hard


def test_too_few_images_skip_pca() -> None:
    rng = np.random.default_rng(0)
    codebook, _, _ = train_codebook([rng.normal(size=(50, 16)) for _ in range(5)], vlad_conf({"num_clusters": 4}))
    assert codebook.pca_matrix is None and codebook.dim == 4 * 16


def test_unknown_option_fails_loudly() -> None:
    with pytest.raises(GluelocError, match="unknown option 'clusters'"):
        vlad_conf({"clusters": 8})


def test_a_small_database_whitens_onto_half_as_many_components_as_images() -> None:
    """Onto N - 1 components PCA-whitening makes the N training images a regular simplex,
    and a database photo held out by calibration then ranks every other one the same."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(8, 16))
    sets = [blobs(rng, centres[rng.choice(8, size=3, replace=False)], 150) for _ in range(20)]
    codebook, images, _ = train_codebook(sets, vlad_conf({"num_clusters": 8, "pca_dim": 512}))
    assert images == 20 and codebook.dim == 20 // IMAGES_PER_COMPONENT
    vectors = np.stack([codebook.aggregate(s) for s in sets])
    similarities = (vectors @ vectors.T)[~np.eye(len(sets), dtype=bool)]
    assert similarities.std() > 0.05  # a simplex: all -1/19, spread ~1e-8
