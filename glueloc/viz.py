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
