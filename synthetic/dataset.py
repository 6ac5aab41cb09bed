"""The synthetic dataset on disk: capture points and queries rendered from the room, with their CSVs.

What ``glueloc demo`` indexes and what the test suite runs on: ``labels.csv`` and
``images/`` in the layout a user's own photos have, plus held-out query views with
their true positions.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from glueloc.synthetic.scene import Pose, Scene

logger = logging.getLogger(__name__)

# Margins (distance to any wall) used when choosing dataset poses: capture points stand
# well clear of walls so their views show more than one blurry surface.
CAPTURE_MARGIN = 1.0
QUERY_MARGIN = 0.7
QUERY_MIN_OFFSET = 0.5
QUERY_MAX_OFFSET = 1.5


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`write_dataset` put things: the CSVs and their image folders."""

    labels_csv: Path
    images_dir: Path
    queries_csv: Path
    queries_dir: Path


def write_dataset(
    out_dir: Path,
    n_places: int = 20,
    views_per_place: int = 4,
    n_queries: int = 6,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
) -> SyntheticDataset:
    """Render a labelled image set and held-out queries into ``out_dir``.

    Layout: ``images/place{i:03d}_{v}.jpg`` with ``labels.csv`` (``name,x,y``; all views
    of a place share its position) and ``queries/query{i:03d}.jpg`` with ``queries.csv``
    (their true positions). Capture points lie on a jittered grid over the free floor so
    that the whole room is covered; each place gets ``views_per_place`` evenly spaced
    headings so any direction a query looks in was photographed from nearby. Queries
    stand 0.5-1.5 units from a capture point, never on one, and look in a random
    direction, like a user who walked a little away from where the index was shot.
    Positions are rounded to 4 decimals *before* rendering, so the CSVs are exact.
    """
    if n_places < 1 or views_per_place < 1 or n_queries < 0:
        raise ValueError("need n_places >= 1, views_per_place >= 1 and n_queries >= 0")
    scene = Scene.from_seed(seed)
    rng = np.random.default_rng([seed, 1])
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    queries_dir = out_dir / "queries"
    images_dir.mkdir(parents=True, exist_ok=True)
    queries_dir.mkdir(parents=True, exist_ok=True)

    places = _capture_points(scene, n_places, rng)
    label_rows: list[tuple[str, float, float]] = []
    for i, (x, y) in enumerate(places):
        for v, heading in enumerate(_place_headings(views_per_place, rng)):
            name = f"place{i:03d}_{v}.jpg"
            _write_jpeg(images_dir / name, scene.render(Pose(x, y, heading), width, height))
            label_rows.append((name, x, y))

    query_rows: list[tuple[str, float, float]] = []
    for i, pose in enumerate(_query_poses(scene, places, n_queries, rng)):
        name = f"query{i:03d}.jpg"
        _write_jpeg(queries_dir / name, scene.render(pose, width, height))
        query_rows.append((name, pose.x, pose.y))

    labels_csv = out_dir / "labels.csv"
    queries_csv = out_dir / "queries.csv"
    _write_positions_csv(labels_csv, label_rows)
    _write_positions_csv(queries_csv, query_rows)
    logger.info(
        "wrote synthetic dataset to %s: %d images at %d places, %d queries",
        out_dir,
        len(label_rows),
        len(places),
        len(query_rows),
    )
    return SyntheticDataset(labels_csv, images_dir, queries_csv, queries_dir)


# --- geometry -----------------------------------------------------------------------


def _capture_points(scene: Scene, n_places: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """``n_places`` free positions on a jittered grid covering the room.

    The grid is refined until enough cells have a free jittered point (cells on an
    obstacle are dropped), then ``n_places`` of them are picked, kept in grid order.
    """
    xmin, ymin, xmax, ymax = scene.bounds
    room_w, room_h = xmax - xmin, ymax - ymin
    target = n_places
    for _ in range(20):
        cols = max(1, math.ceil(math.sqrt(target * room_w / room_h)))
        rows = max(1, math.ceil(target / cols))
        cell_w, cell_h = room_w / cols, room_h / rows
        candidates = []
        for r in range(rows):
            for c in range(cols):
                centre_x, centre_y = xmin + (c + 0.5) * cell_w, ymin + (r + 0.5) * cell_h
                point = _jittered_free_point(scene, rng, centre_x, centre_y, cell_w, cell_h)
                if point is not None:
                    candidates.append(point)
        if len(candidates) >= n_places:
            chosen = np.sort(rng.choice(len(candidates), n_places, replace=False))
            return [candidates[i] for i in chosen]
        target = math.ceil(target * 1.3) + 1
    raise ValueError(f"cannot place {n_places} capture points in the free space")


def _jittered_free_point(
    scene: Scene, rng: np.random.Generator, cx: float, cy: float, cell_w: float, cell_h: float
) -> tuple[float, float] | None:
    """A free point near a grid cell's centre (up to 30% of the cell away), or None."""
    for _ in range(8):
        x = round(cx + rng.uniform(-0.3, 0.3) * cell_w, 4)
        y = round(cy + rng.uniform(-0.3, 0.3) * cell_h, 4)
        if scene.is_free(x, y, CAPTURE_MARGIN):
            return (x, y)
    return None


def _place_headings(views: int, rng: np.random.Generator) -> list[float]:
    """Evenly spaced headings from a random start, each nudged by up to +-0.1 rad."""
    start = rng.uniform(0, 2 * math.pi)
    return [round((start + 2 * math.pi * v / views + rng.uniform(-0.1, 0.1)) % (2 * math.pi), 6) for v in range(views)]


def _query_poses(
    scene: Scene, places: list[tuple[float, float]], n_queries: int, rng: np.random.Generator
) -> list[Pose]:
    """Poses 0.5-1.5 units from a random capture point and clear of every capture point."""
    anchors = np.array(places)
    poses: list[Pose] = []
    attempts = 0
    while len(poses) < n_queries:
        attempts += 1
        if attempts > 200 * n_queries:
            raise ValueError(f"cannot place {n_queries} queries near the capture points")
        ax, ay = places[int(rng.integers(0, len(places)))]
        angle = rng.uniform(0, 2 * math.pi)
        offset = rng.uniform(QUERY_MIN_OFFSET, QUERY_MAX_OFFSET)
        x = round(ax + offset * math.cos(angle), 4)
        y = round(ay + offset * math.sin(angle), 4)
        heading = round(rng.uniform(0, 2 * math.pi), 6)
        nearest = float(np.min(np.hypot(anchors[:, 0] - x, anchors[:, 1] - y)))
        if scene.is_free(x, y, QUERY_MARGIN) and nearest >= QUERY_MIN_OFFSET / 2:
            poses.append(Pose(x, y, heading))
    return poses


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Save an RGB image as a quality-95 JPEG (OpenCV wants BGR)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"could not write {path}")


def _write_positions_csv(path: Path, rows: list[tuple[str, float, float]]) -> None:
    """Write ``name,x,y`` with 4-decimal coordinates, the format glueloc's indexer reads."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "x", "y"])
        for name, x, y in rows:
            writer.writerow([name, f"{x:.4f}", f"{y:.4f}"])
