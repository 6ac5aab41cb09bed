"""Procedural textures of the synthetic room: blobs, edges and glyphs, a pure function of the seed.

Dense enough that SIFT and XFeat find hundreds of keypoints on a wall 1-3 units away,
and different on every wall so that places can be told apart; lit from one fixed
direction so that walls facing different ways differ in brightness as in real rooms.
"""

from __future__ import annotations

import logging
import math
import string
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

WALL_HEIGHT = 3.0  # scene units; a wall's texture spans it
WALL_TEXELS_PER_UNIT = 100  # see synthetic.scene: walls are seen from 1-3 units
PLANE_TEXELS_PER_UNIT = 64

#: Direction of the (fixed, baked-in) light, so walls facing different ways differ in
#: brightness the way real rooms do, without any view-dependent shading.
_LIGHT_DIRECTION = (0.6, 0.8)
_GLYPHS = string.ascii_uppercase + string.digits
_FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
)


@dataclass(frozen=True)
class _Style:
    """How a surface's texture looks: shape density, background and how colourful.

    Walls are busy and colourful (they carry the place-specific features); the floor
    and ceiling are calmer and muted, like real ones, but still textured so that their
    features are consistent with the geometry rather than blank.
    """

    shapes_per_unit2: float
    base_range: tuple[float, float]  # background base colour, per channel
    noise_amplitude: float  # scale of the background's colour noise
    colour_mix: float  # 1: shape colours fully random; less: pulled toward the base


_WALL_STYLE = _Style(shapes_per_unit2=14.0, base_range=(60.0, 200.0), noise_amplitude=1.0, colour_mix=1.0)
_FLOOR_STYLE = _Style(shapes_per_unit2=6.0, base_range=(70.0, 140.0), noise_amplitude=0.6, colour_mix=0.6)
_CEILING_STYLE = _Style(shapes_per_unit2=4.0, base_range=(170.0, 225.0), noise_amplitude=0.4, colour_mix=0.5)


def wall_texture(seed: int, index: int, length: float, normal: np.ndarray) -> np.ndarray:
    """The texture of wall ``index``: its own random stream, palette and baked shading."""
    rng = np.random.default_rng([seed, 0, index])
    width = max(1, round(length * WALL_TEXELS_PER_UNIT))
    height = round(WALL_HEIGHT * WALL_TEXELS_PER_UNIT)
    texture = _procedural_texture(rng, width, height, WALL_TEXELS_PER_UNIT, _WALL_STYLE)
    light = abs(float(normal[0]) * _LIGHT_DIRECTION[0] + float(normal[1]) * _LIGHT_DIRECTION[1])
    return _shade(texture, 0.72 + 0.28 * light)


def plane_texture(seed: int, which: str, width: int, height: int) -> np.ndarray:
    """Floor or ceiling texture, each from its own random stream."""
    stream, style, shade = {"floor": (1000, _FLOOR_STYLE, 0.85), "ceiling": (1001, _CEILING_STYLE, 0.95)}[which]
    rng = np.random.default_rng([seed, 0, stream])
    return _shade(_procedural_texture(rng, width, height, PLANE_TEXELS_PER_UNIT, style), shade)


def _shade(texture: np.ndarray, factor: float) -> np.ndarray:
    """Scale brightness (rounded, saturated): the baked-in, view-independent lighting."""
    return cv2.convertScaleAbs(texture, alpha=factor)


def _procedural_texture(
    rng: np.random.Generator, width: int, height: int, texels_per_unit: float, style: _Style
) -> np.ndarray:
    """A feature-rich RGB texture: smooth coloured noise under random shapes and glyphs.

    Shape sizes are log-uniform from a few hundredths to half a unit, so there are
    blobs and corners for SIFT at every scale a view from 1-10 units resolves.
    """
    base = rng.uniform(*style.base_range, 3)
    texture = _smooth_background(rng, width, height, texels_per_unit, base, style.noise_amplitude)
    area = (width / texels_per_unit) * (height / texels_per_unit)
    n_shapes = int(round(area * style.shapes_per_unit2))
    kinds = rng.integers(0, 5, n_shapes)
    centres = rng.random((n_shapes, 2)) * np.array([width, height])
    sizes = np.exp(rng.uniform(math.log(0.03), math.log(0.5), n_shapes)) * texels_per_unit
    colours = base + style.colour_mix * (rng.integers(0, 256, (n_shapes, 3)) - base)
    filled = rng.random(n_shapes) < 0.7
    for kind, centre, size, colour, fill in zip(kinds, centres, sizes, colours, filled):
        _draw_shape(texture, rng, int(kind), centre, float(size), tuple(int(c) for c in colour), bool(fill))
    return texture


def _smooth_background(
    rng: np.random.Generator, width: int, height: int, texels_per_unit: float, base: np.ndarray, amplitude: float
) -> np.ndarray:
    """``base`` colour plus two octaves of bicubically interpolated value noise.

    The noise is smooth at the scale of a texel, so it is built at 1/8 resolution and
    upsampled once: the same look at a fraction of the cost of full-size float images.
    """
    small_w, small_h = max(2, -(-width // 8)), max(2, -(-height // 8))
    small_units = texels_per_unit / 8.0
    image = np.empty((small_h, small_w, 3), np.float32)
    image[:] = base
    for cell_units, octave_amplitude in ((2.0, 70.0), (0.4, 35.0)):
        cell = max(2, int(round(cell_units * small_units)))
        grid_w, grid_h = small_w // cell + 3, small_h // cell + 3
        grid = rng.random((grid_h, grid_w, 3)).astype(np.float32)
        noise = cv2.resize(grid, (grid_w * cell, grid_h * cell), interpolation=cv2.INTER_CUBIC)
        image += amplitude * octave_amplitude * (noise[cell : cell + small_h, cell : cell + small_w] - 0.5)
    small = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _draw_shape(
    canvas: np.ndarray,
    rng: np.random.Generator,
    kind: int,
    centre: np.ndarray,
    size: float,
    colour: tuple[int, ...],
    filled: bool,
) -> None:
    """Draw one random shape of kind 0-4 (circle, rectangle, polygon, line, glyph block)."""
    cx, cy = int(centre[0]), int(centre[1])
    radius = max(2, int(size / 2))
    thickness = -1 if filled else int(rng.integers(1, 4))
    if kind == 0:
        cv2.circle(canvas, (cx, cy), radius, colour, thickness, cv2.LINE_AA)
    elif kind == 1:
        half = rng.uniform(0.3, 1.0, 2) * radius
        p0 = (int(cx - half[0]), int(cy - half[1]))
        p1 = (int(cx + half[0]), int(cy + half[1]))
        cv2.rectangle(canvas, p0, p1, colour, thickness, cv2.LINE_AA)
    elif kind == 2:
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.4, 1.0, n) * radius
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1).astype(np.int32)
        if filled:
            cv2.fillPoly(canvas, [points], colour, cv2.LINE_AA)
        else:
            cv2.polylines(canvas, [points], True, colour, thickness, cv2.LINE_AA)
    elif kind == 3:
        angle = rng.uniform(0, math.pi)
        dx, dy = radius * 1.5 * math.cos(angle), radius * 1.5 * math.sin(angle)
        width = int(rng.integers(1, max(2, radius // 4) + 1))
        cv2.line(canvas, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), colour, width, cv2.LINE_AA)
    else:
        _draw_glyph_block(canvas, rng, (cx, cy), size, colour)


def _draw_glyph_block(
    canvas: np.ndarray, rng: np.random.Generator, centre: tuple[int, int], size: float, colour: tuple[int, ...]
) -> None:
    """A label: a plain rectangle with a few random characters on it, like a sign.

    Each label is drawn upright on its own patch and pasted through a random affine map
    (stretch, shear, rotation). Without that, every "A" in a given font would be the
    same SIFT descriptor wherever it appears, and unrelated walls would share matches.
    """
    text = "".join(_GLYPHS[int(i)] for i in rng.integers(0, len(_GLYPHS), int(rng.integers(2, 7))))
    font = _FONTS[int(rng.integers(0, len(_FONTS)))]
    scale = max(0.3, size / 30.0)
    thickness = max(1, int(round(scale * rng.uniform(1.0, 2.5))))
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    margin = max(2, text_h // 3)
    patch = np.empty((text_h + baseline + 2 * margin, text_w + 2 * margin, 3), np.uint8)
    patch[:] = tuple(255 - c for c in colour)
    cv2.putText(patch, text, (margin, margin + text_h), font, scale, colour, thickness, cv2.LINE_AA)
    _paste_affine(canvas, patch, centre, _random_affine(rng))


def _random_affine(rng: np.random.Generator) -> np.ndarray:
    """A 2x2 map: log-uniform anisotropic scale 0.6-1.6, shear up to 0.4, tilt up to 0.5 rad."""
    sx, sy = np.exp(rng.uniform(math.log(0.6), math.log(1.6), 2))
    shear = rng.uniform(-0.4, 0.4)
    angle = rng.uniform(-0.5, 0.5)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return rotation @ np.array([[sx, shear * sx], [0.0, sy]])


def _paste_affine(canvas: np.ndarray, patch: np.ndarray, centre: tuple[int, int], linear: np.ndarray) -> None:
    """Warp ``patch`` by ``linear`` about its centre onto ``canvas`` at ``centre`` (clipped)."""
    ph, pw = patch.shape[:2]
    corners = np.array([[0, 0], [pw, 0], [0, ph], [pw, ph]], float) - [pw / 2, ph / 2]
    extent = np.abs(corners @ linear.T).max(axis=0)
    half_w, half_h = int(math.ceil(extent[0])) + 1, int(math.ceil(extent[1])) + 1
    out_w, out_h = 2 * half_w, 2 * half_h
    shift = np.array([half_w, half_h]) - linear @ np.array([pw / 2, ph / 2])
    matrix = np.hstack([linear, shift[:, None]])
    # One warp of an RGBA patch carries both the pixels and the (anti-aliased) coverage.
    rgba = cv2.cvtColor(patch, cv2.COLOR_RGB2RGBA)
    warped = cv2.warpAffine(rgba, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR)
    x0, y0 = centre[0] - half_w, centre[1] - half_h
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + out_w, canvas.shape[1]), min(y0 + out_h, canvas.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    region = canvas[cy0:cy1, cx0:cx1]
    src = np.ascontiguousarray(warped[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0])
    # Outside the patch the warp reads black, so its colours come out premultiplied:
    # result = colour + (1 - alpha) * canvas. OpenCV's saturating uint8 arithmetic does
    # this without per-label numpy temporaries, which dominated texture generation.
    coverage = cv2.bitwise_not(src[:, :, 3])
    kept = cv2.multiply(region, cv2.merge([coverage, coverage, coverage]), scale=1.0 / 255.0)
    region[:] = cv2.add(kept, cv2.cvtColor(src, cv2.COLOR_RGBA2RGB))


# --- dataset ------------------------------------------------------------------------
