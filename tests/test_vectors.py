"""The FAISS store: exact up to a size, HNSW beyond; ids are image ids; add, remove, save atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glueloc.query.retrieval import collapse_ranked, retrieve
from glueloc.storage.vectors import VectorIndex


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_returns_image_ids() -> None:
    vectors = unit_rows(50, 16)
    ids = np.arange(1000, 1050)
    index = VectorIndex.build(ids, vectors, 16)
    assert not index.approximate
    sims, found = index.search(vectors[7], 3)
    assert found[0, 0] == 1007 and np.isclose(sims[0, 0], 1.0)


def test_grows_into_hnsw_past_the_limit_and_keeps_everything() -> None:
    vectors = unit_rows(300, 16)
    index = VectorIndex.build(np.arange(200), vectors[:200], 16, exact_limit=250)
    assert not index.approximate
    index = index.add(np.arange(200, 300), vectors[200:], exact_limit=250)
    assert index.approximate and index.count == 300
    assert set(index.ids().tolist()) == set(range(300))
    hits = sum(index.search(vectors[i], 1)[1][0, 0] == i for i in range(300))
    assert hits >= 295  # HNSW is approximate, but not by much at this size


def test_remove_from_exact_and_approximate() -> None:
    vectors = unit_rows(100, 8)
    for limit in (1000, 10):
        index = VectorIndex.build(np.arange(100), vectors, 8, exact_limit=limit)
        index = index.remove(np.array([3, 4, 5]))
        assert index.count == 97 and not {3, 4, 5} & set(index.ids().tolist())
        assert index.search(vectors[3], 1)[1][0, 0] != 3


def test_save_new_is_a_fresh_file_and_round_trips(tmp_path: Path) -> None:
    index = VectorIndex.build(np.arange(10), unit_rows(10, 8), 8)
    first = index.save_new(tmp_path)
    second = index.save_new(tmp_path)
    assert first != second and sorted(p.name for p in tmp_path.iterdir()) == sorted([first, second])
    loaded = VectorIndex.load(tmp_path / first)
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    np.testing.assert_allclose(loaded.vectors(), index.vectors())


def test_collapse_keeps_one_image_per_position() -> None:
    positions = {1: (0.0, 0.0), 2: (0.0, 0.0), 3: (5.0, 5.0), 4: (0.0, 0.0), 5: (9.0, 9.0)}
    assert collapse_ranked(np.array([2, 1, 4, 3, -1, 5]), positions, 3) == [2, 3, 5]
    vectors = unit_rows(5, 8)
    index = VectorIndex.build(np.arange(1, 6), vectors, 8)
    found = retrieve(index, vectors[0], 5, positions)
    assert [c.image_id for c in found][0] == 1 and len(found) == 3
