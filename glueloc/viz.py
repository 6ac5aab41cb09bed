"""Pictures a person checks an answer with: two images side by side and their matches.

Like the figures of the SuperGlue paper: each correspondence is a line coloured by the
matcher's confidence on the jet colormap (red = confident, blue = not), RANSAC outliers
are drawn thin and grey (or hidden), and the counts are written in the corner.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)


def jet(values: np.ndarray) -> np.ndarray:
    """(N,) values in [0, 1] -> (N, 3) uint8 RGB colours of the jet colormap."""
    scaled = np.clip(values, 0.0, 1.0) * 255.0
    bgr = cv2.applyColorMap(scaled.astype(np.uint8).reshape(-1, 1), cv2.COLORMAP_JET).reshape(-1, 3)
    return bgr[:, ::-1]


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    confidence: np.ndarray,
    inliers: np.ndarray | None = None,
    text: list[str] | None = None,
    height: int = 480,
    show_outliers: bool = True,
) -> np.ndarray:
    """An RGB picture of both images (scaled to ``height``) with their correspondences."""
    scale0 = height / image0.shape[0]
    scale1 = height / image1.shape[0]
    left = cv2.resize(image0, (round(image0.shape[1] * scale0), height), interpolation=cv2.INTER_AREA)
    right = cv2.resize(image1, (round(image1.shape[1] * scale1), height), interpolation=cv2.INTER_AREA)
    gap = 10
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    canvas[:, : left.shape[1]] = left
    canvas[:, left.shape[1] + gap :] = right
    offset = left.shape[1] + gap
    inliers = np.ones(len(points0), bool) if inliers is None else inliers
    colours = jet(confidence)
    order = np.argsort(confidence)  # draw confident matches last, on top
    for i in order:
        p0 = (int(round(points0[i, 0] * scale0)), int(round(points0[i, 1] * scale0)))
        p1 = (int(round(points1[i, 0] * scale1)) + offset, int(round(points1[i, 1] * scale1)))
        if inliers[i]:
            colour = tuple(int(c) for c in colours[i])
            cv2.line(canvas, p0, p1, colour, 1, cv2.LINE_AA)
            cv2.circle(canvas, p0, 2, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, p1, 2, colour, -1, cv2.LINE_AA)
        elif show_outliers:
            cv2.line(canvas, p0, p1, (170, 170, 170), 1, cv2.LINE_AA)
    for row, line in enumerate(text or []):
        y = 28 + 28 * row
        cv2.putText(canvas, line, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 5, cv2.LINE_AA)
        cv2.putText(canvas, line, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return canvas


def save_rgb(path: Path, image: np.ndarray) -> None:
    """Write an RGB image (PNG by the extension), creating no partial file on failure."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


class _Frame:
    """Maps world (x, y) to pixels of a square panel, y up, with a margin."""

    def __init__(self, points: np.ndarray, size: int, margin: int = 30, offset: tuple[int, int] = (0, 0)) -> None:
        self.low = points.min(axis=0)
        span = float(max(points.max(axis=0) - self.low)) or 1.0
        self.scale = (size - 2 * margin) / span
        self.margin, self.size, self.offset = margin, size, offset

    def __call__(self, x: float, y: float) -> tuple[int, int]:
        px = self.margin + (x - self.low[0]) * self.scale + self.offset[0]
        py = self.size - self.margin - (y - self.low[1]) * self.scale + self.offset[1]
        return int(round(px)), int(round(py))


def draw_map(db_xy: np.ndarray, neighbours: list[tuple[float, float, int]], estimate: tuple[float, float] | None,
             truth: tuple[float, float] | None = None, size: int = 800, title: str = "") -> np.ndarray:
    """Database positions (grey), verified neighbours (jet by inliers, red = most), the estimate
    (black cross) and, when known, the true position (green ring)."""
    points = [db_xy] + [np.array([[x, y] for x, y, _ in neighbours])] if neighbours else [db_xy]
    extra = [np.array([estimate])] if estimate else []
    extra += [np.array([truth])] if truth else []
    frame = _Frame(np.concatenate(points + extra), size)
    canvas = np.full((size, size, 3), 255, np.uint8)
    for x, y in db_xy:
        cv2.circle(canvas, frame(x, y), 2, (190, 190, 190), -1)
    if neighbours:
        top = max(n[2] for n in neighbours) or 1
        colours = jet(np.array([n[2] / top for n in neighbours]))
        for (x, y, inliers), colour in sorted(zip(neighbours, colours), key=lambda item: item[0][2]):
            cv2.circle(canvas, frame(x, y), 7, tuple(int(c) for c in colour), -1, cv2.LINE_AA)
    if truth:
        cv2.circle(canvas, frame(*truth), 12, (0, 160, 0), 3, cv2.LINE_AA)
    if estimate:
        cv2.drawMarker(canvas, frame(*estimate), (0, 0, 0), cv2.MARKER_CROSS, 26, 3, cv2.LINE_AA)
    if title:
        cv2.putText(canvas, title, (10, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def draw_errors(errors: np.ndarray, true_xy: np.ndarray, predicted_xy: np.ndarray, db_xy: np.ndarray,
                size: int = 600, gross: float = 20.0) -> np.ndarray:
    """Left: histogram of errors (|dx| + |dy|, last bin = beyond ``gross``). Right: the map,
    each query a line from its true position (green) to its prediction (red if gross)."""
    canvas = np.full((size, 2 * size, 3), 255, np.uint8)
    edges = np.concatenate([np.linspace(0, gross, 21), [np.inf]])
    counts, _ = np.histogram(np.minimum(errors, gross + 1), bins=edges)
    width = (size - 60) / len(counts)
    top = max(int(counts.max()), 1)
    for i, count in enumerate(counts):
        x0 = int(40 + i * width)
        y0 = int(size - 40 - (size - 100) * count / top)
        colour = (200, 60, 60) if i == len(counts) - 1 else (70, 110, 200)
        cv2.rectangle(canvas, (x0, y0), (int(x0 + width - 2), size - 40), colour, -1)
    cv2.putText(canvas, f"error |dx|+|dy|: 0 .. {gross:g} units, last bar > {gross:g}; tallest bar {top}",
                (10, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    frame = _Frame(np.concatenate([db_xy, true_xy, predicted_xy]), size, offset=(size, 0))
    for x, y in db_xy:
        cv2.circle(canvas, frame(x, y), 1, (200, 200, 200), -1)
    for (tx, ty), (px, py), error in zip(true_xy, predicted_xy, errors):
        colour = (220, 30, 30) if error > gross else (90, 90, 90)
        cv2.line(canvas, frame(tx, ty), frame(px, py), colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, frame(tx, ty), 3, (0, 160, 0), -1)
    cv2.line(canvas, (size, 0), (size, size), (0, 0, 0), 1)
    return canvas
