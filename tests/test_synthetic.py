"""The synthetic scene must be deterministic and geometrically real.

Tests and the demo trust it as ground truth: if two renders of one pose differed, or if
its views were not related by true 3-D geometry, every localisation test built on it
would be measuring the generator instead of glueloc. So these tests check bit-exact
determinism, the pinhole projection itself (a pure rotation must map pixels by the
homography K R K^-1), that nearby views verify with RANSAC while unrelated ones do not,
and the files ``write_dataset`` produces.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from glueloc.synthetic import HFOV_RADIANS, Pose, Scene, SyntheticDataset, write_dataset

WIDTH, HEIGHT = 320, 240


@pytest.fixture(scope="module")
def scene() -> Scene:
    return Scene.from_seed(0)


def _sift_matches(a: np.ndarray, b: np.ndarray, ratio: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Lowe-ratio-tested SIFT matches between two RGB images, as two (N, 2) point arrays."""
    sift = cv2.SIFT_create()
    kp_a, desc_a = sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
    kp_b, desc_b = sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    if desc_a is None or desc_b is None or len(kp_a) < 2 or len(kp_b) < 2:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    points_a = np.float32([kp_a[m.queryIdx].pt for m in good]).reshape(-1, 2)
    points_b = np.float32([kp_b[m.trainIdx].pt for m in good]).reshape(-1, 2)
    return points_a, points_b


def _ransac_inliers(a: np.ndarray, b: np.ndarray) -> int:
    """Matches consistent with one fundamental matrix (MAGSAC, 1 px): the query path's test."""
    points_a, points_b = _sift_matches(a, b)
    if len(points_a) < 8:
        return 0
    try:
        _, mask = cv2.findFundamentalMat(points_a, points_b, cv2.USAC_MAGSAC, 1.0, 0.999, 10000)
    except cv2.error:
        return 0
    return 0 if mask is None else int(mask.sum())


# --- rendering ----------------------------------------------------------------------


def test_render_returns_rgb_image_of_requested_size(scene: Scene) -> None:
    image = scene.render(Pose(4.0, 8.0, 0.0))
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert image.dtype == np.uint8
    small = scene.render(Pose(4.0, 8.0, 0.0), width=160, height=100)
    assert small.shape == (100, 160, 3)
    # A textured room, not a flat fill: plenty of contrast in every channel.
    assert image.reshape(-1, 3).std(axis=0).min() > 20


def test_render_is_bit_identical_for_same_seed_and_pose(scene: Scene) -> None:
    pose = Pose(12.3, 7.1, 2.0)
    first = scene.render(pose)
    assert np.array_equal(first, scene.render(pose))
    # A scene rebuilt from the same seed is the same scene.
    assert np.array_equal(first, Scene.from_seed(0).render(pose))


def test_different_seeds_give_different_textures(scene: Scene) -> None:
    pose = Pose(12.3, 7.1, 2.0)
    a = scene.render(pose).astype(np.int16)
    b = Scene.from_seed(1).render(pose).astype(np.int16)
    assert np.abs(a - b).mean() > 20


def test_different_walls_look_different(scene: Scene) -> None:
    # The four outer walls seen square-on from the room's centre (no obstacle in between
    # for +-y; the partition and pillar occupy part of the +-x views, which is fine).
    views = [scene.render(Pose(12.0, 8.0, h)) for h in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)]
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            assert np.abs(views[i].astype(np.int16) - views[j].astype(np.int16)).mean() > 20


def test_render_rejects_poses_outside_free_space(scene: Scene) -> None:
    with pytest.raises(ValueError):
        scene.render(Pose(30.0, 5.0, 0.0))  # outside the room
    with pytest.raises(ValueError):
        scene.render(Pose(16.5, 4.5, 0.0))  # inside the pillar
    with pytest.raises(ValueError):
        scene.render(Pose(4.0, 8.0, 0.0), width=0)


def test_is_free_respects_walls_obstacles_and_margin(scene: Scene) -> None:
    xmin, ymin, xmax, ymax = scene.bounds
    assert (xmin, ymin, xmax, ymax) == (0.0, 0.0, 24.0, 16.0)
    assert scene.is_free(4.0, 8.0)
    assert not scene.is_free(-1.0, 8.0)  # outside
    assert not scene.is_free(0.3, 8.0)  # within the default 0.5 of the west wall
    assert scene.is_free(0.3, 8.0, margin=0.2)
    assert not scene.is_free(8.0, 7.0, margin=0.0)  # inside the partition wall
    assert not scene.is_free(8.5, 7.0)  # 0.3 from the partition
    assert scene.is_free(8.5, 7.0, margin=0.1)
    assert not scene.is_free(16.5, 4.5, margin=0.0)  # inside the pillar


# --- geometry -----------------------------------------------------------------------


def test_pure_rotation_maps_pixels_by_the_pinhole_homography(scene: Scene) -> None:
    """Turning on the spot must move every pixel exactly as K R K^-1 predicts.

    This pins down the projection model itself: a fish-eye, a wrong focal length or a
    wrong sign would put matched keypoints pixels away from the prediction.
    """
    turn = 0.25  # radians, to the left
    a = scene.render(Pose(5.0, 8.0, 0.1))
    b = scene.render(Pose(5.0, 8.0, 0.1 + turn))
    points_a, points_b = _sift_matches(a, b)
    assert len(points_a) >= 100
    focal = (WIDTH / 2) / math.tan(HFOV_RADIANS / 2)
    # SIFT puts pixel centres at integers; the renderer's image plane has them at +0.5.
    ua, va = points_a[:, 0] + 0.5 - WIDTH / 2, points_a[:, 1] + 0.5 - HEIGHT / 2
    angle_a = -np.arctan(ua / focal)  # bearing left of the optical axis
    angle_b = angle_a - turn
    expected_u = -focal * np.tan(angle_b)
    expected_v = va * np.cos(angle_a) / np.cos(angle_b)  # depth along the new axis changes
    ub, vb = points_b[:, 0] + 0.5 - WIDTH / 2, points_b[:, 1] + 0.5 - HEIGHT / 2
    error = np.hypot(ub - expected_u, vb - expected_v)
    assert np.median(error) < 0.5
    assert np.mean(error < 2.0) > 0.9


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Pose(4.0, 8.0, 0.0), Pose(4.0, 8.5, 0.0)),  # sideways, facing the partition
        (Pose(12.0, 8.0, math.pi / 2), Pose(12.5, 8.0, math.pi / 2)),  # facing the north partition
        (Pose(20.0, 13.0, 0.8), Pose(20.0, 13.5, 0.8)),  # into the north-east corner
        (Pose(10.0, 3.0, 0.5), Pose(10.5, 3.0, 0.5)),  # across the room, pillar in view
        (Pose(6.0, 12.0, 2.5), Pose(6.4, 11.7, 2.5)),  # forward-ish towards a corner
    ],
)
def test_nearby_views_verify_with_many_inliers(scene: Scene, first: Pose, second: Pose) -> None:
    assert math.dist((first.x, first.y), (second.x, second.y)) == pytest.approx(0.5)
    assert _ransac_inliers(scene.render(first), scene.render(second)) >= 30


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (Pose(4.0, 4.0, 0.0), Pose(20.0, 12.0, math.pi)),
        (Pose(12.0, 8.0, math.pi / 2), Pose(12.0, 8.0, -math.pi / 2)),
        (Pose(3.0, 13.0, 0.0), Pose(21.0, 3.0, math.pi)),
    ],
)
def test_views_of_different_walls_barely_verify(scene: Scene, first: Pose, second: Pose) -> None:
    unrelated = _ransac_inliers(scene.render(first), scene.render(second))
    # The same pair of places with matching headings does verify, so the low count is
    # about content, not about the images being hard to match.
    nudged = Pose(first.x + 0.3, first.y + 0.3, first.heading)
    related = _ransac_inliers(scene.render(first), scene.render(nudged))
    assert unrelated < 15
    assert related >= 10 * max(unrelated, 3)


# --- dataset ------------------------------------------------------------------------


def _read_positions(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


# Small images keep the dataset tests fast and check that the size is passed through.
DATASET_ARGS = {"n_places": 7, "views_per_place": 3, "n_queries": 4, "width": 160, "height": 120}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return write_dataset(tmp_path_factory.mktemp("synth"), seed=0, **DATASET_ARGS)


def test_write_dataset_writes_labelled_images(dataset: SyntheticDataset, scene: Scene) -> None:
    assert dataset.labels_csv.name == "labels.csv"
    assert dataset.images_dir == dataset.labels_csv.parent / "images"
    header, rows = _read_positions(dataset.labels_csv)
    assert header == ["name", "x", "y"]
    expected_names = [f"place{i:03d}_{v}.jpg" for i in range(7) for v in range(3)]
    assert [row[0] for row in rows] == expected_names
    assert sorted(p.name for p in dataset.images_dir.iterdir()) == sorted(expected_names)
    for name, x, y in rows:
        assert len(x.split(".")[1]) == 4 and len(y.split(".")[1]) == 4
        assert scene.is_free(float(x), float(y), margin=0.5)
        image = cv2.imread(str(dataset.images_dir / name))
        assert image is not None and image.shape == (120, 160, 3)
    # All views of a place share its position; different places are different.
    positions = {name.split("_")[0]: (x, y) for name, x, y in rows}
    for name, x, y in rows:
        assert positions[name.split("_")[0]] == (x, y)
    assert len(set(positions.values())) == 7


def test_write_dataset_views_of_a_place_face_different_ways(dataset: SyntheticDataset) -> None:
    images = [cv2.imread(str(dataset.images_dir / f"place000_{v}.jpg")).astype(np.int16) for v in range(3)]
    assert np.abs(images[0] - images[1]).mean() > 20
    assert np.abs(images[1] - images[2]).mean() > 20


def test_write_dataset_queries_are_new_poses_near_capture_points(dataset: SyntheticDataset, scene: Scene) -> None:
    header, rows = _read_positions(dataset.queries_csv)
    assert header == ["name", "x", "y"]
    names = [f"query{i:03d}.jpg" for i in range(4)]
    assert [row[0] for row in rows] == names
    assert sorted(p.name for p in dataset.queries_dir.iterdir()) == names
    _, label_rows = _read_positions(dataset.labels_csv)
    captures = np.array(sorted({(float(x), float(y)) for _, x, y in label_rows}))
    for name, x, y in rows:
        qx, qy = float(x), float(y)
        assert scene.is_free(qx, qy, margin=0.5)
        distances = np.hypot(captures[:, 0] - qx, captures[:, 1] - qy)
        assert distances.min() >= 0.25  # not a capture position
        assert distances.min() <= 1.5 + 1e-3  # but near one
        assert cv2.imread(str(dataset.queries_dir / name)).shape == (120, 160, 3)


def test_write_dataset_is_deterministic(dataset: SyntheticDataset, tmp_path: Path) -> None:
    again = write_dataset(tmp_path / "again", seed=0, **DATASET_ARGS)
    assert again.labels_csv.read_bytes() == dataset.labels_csv.read_bytes()
    assert again.queries_csv.read_bytes() == dataset.queries_csv.read_bytes()
    for name in ("place003_1.jpg", "place006_2.jpg"):
        assert (again.images_dir / name).read_bytes() == (dataset.images_dir / name).read_bytes()
    assert (again.queries_dir / "query003.jpg").read_bytes() == (dataset.queries_dir / "query003.jpg").read_bytes()


def test_write_dataset_poses_depend_on_seed(dataset: SyntheticDataset, tmp_path: Path) -> None:
    other = write_dataset(tmp_path, seed=1, **{**DATASET_ARGS, "views_per_place": 1, "n_queries": 1})
    _, rows = _read_positions(dataset.labels_csv)
    _, other_rows = _read_positions(other.labels_csv)
    assert len(other_rows) == 7
    assert {(x, y) for _, x, y in other_rows}.isdisjoint({(x, y) for _, x, y in rows})
