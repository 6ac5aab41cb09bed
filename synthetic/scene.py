"""A deterministic synthetic indoor scene, for tests and the demo.

Localisation by feature matching can only be tested end to end on images whose camera
positions are known exactly and whose content obeys real 3-D geometry: two photos taken
half a unit apart must be related by a true epipolar geometry, or RANSAC verification
(the heart of the query path) is not being exercised. Shipping real photos would bloat
the repository and make the ground truth approximate, so this module *renders* them.

The scene is a rectangular room (24 x 16 units, walls 3 units high) with a few
free-standing walls and a pillar that occlude each other, so that views from different
places really differ. Every surface carries its own procedural texture, generated from
the seed, dense enough in blobs, edges and glyphs that SIFT finds hundreds of keypoints
from 1-3 units away, and different on every wall so that places are distinguishable.

Rendering is Wolfenstein-style ray casting, vectorised with numpy: one ray per image
column against all wall segments gives the depth of the wall seen in that column; with a
pinhole camera at a fixed height every pixel's world height on that wall (or its point on
the floor/ceiling plane) follows in closed form. Textures are sampled bilinearly from a
mip pyramid chosen by the pixel's texel footprint, the view is rendered at twice the
requested size and area-downsampled; together they keep distant walls from aliasing
into unstable, view-dependent "features". A 320 x 240 view takes a few tens of ms.

Everything is a pure function of ``(seed, pose, size)``: the same inputs give
bit-identical pixels, so tests can assert exact results.
"""

from __future__ import annotations

import csv
import logging
import math
import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Interior of the room: (xmin, ymin, xmax, ymax) in scene units.
ROOM_BOUNDS: tuple[float, float, float, float] = (0.0, 0.0, 24.0, 16.0)
#: Free-standing obstacles as axis-aligned boxes (xmin, ymin, xmax, ymax). The layout is
#: fixed (only textures depend on the seed) so that free space, and therefore tests
#: about where cameras may stand, are the same for every seed.
INTERIOR_BOXES: tuple[tuple[float, float, float, float], ...] = (
    (7.8, 4.0, 8.2, 10.0),  # a partition wall running along y
    (14.0, 10.8, 20.0, 11.2),  # a partition wall running along x
    (16.0, 4.0, 17.0, 5.0),  # a square pillar
)
WALL_HEIGHT = 3.0
CAMERA_HEIGHT = 1.5
HFOV_RADIANS = math.radians(70.0)

#: Texels per scene unit. Walls are seen from 1-3 units, where one output pixel covers
#: about 1/100 of a unit, so 100 texels/unit keeps close-ups sharp; the floor and
#: ceiling are never nearer than ~2.8 units (outside the vertical field of view below
#: that) and are seen obliquely, so they need fewer.
WALL_TEXELS_PER_UNIT = 100
PLANE_TEXELS_PER_UNIT = 64
#: Render at this multiple of the requested size, then area-downsample (anti-aliasing).
SUPERSAMPLE = 2
MIP_LEVELS = 4
#: Replicated border around each wall in the texture atlas, so that bilinear filtering
#: and the blur of coarser mip levels never bleed one wall's texture into another's.
_ATLAS_PAD = 32
#: OpenCV's remap refuses images with a side of SHRT_MAX or more.
_REMAP_MAX_SIDE = 32767
_REMAP_ROW = 4096

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

# Margins (distance to any wall) used when choosing dataset poses: capture points stand
# well clear of walls so their views show more than one blurry surface.
CAPTURE_MARGIN = 1.0
QUERY_MARGIN = 0.7
QUERY_MIN_OFFSET = 0.5
QUERY_MAX_OFFSET = 1.5


@dataclass(frozen=True)
class Pose:
    """A camera pose on the floor plan: position in scene units, heading in radians.

    ``heading`` 0 looks along +x and pi/2 along +y (counter-clockwise, like ``atan2``).
    The camera height is fixed (:data:`CAMERA_HEIGHT`), because glueloc localises in 2-D.
    """

    x: float
    y: float
    heading: float


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`write_dataset` put things: the CSVs and their image folders."""

    labels_csv: Path
    images_dir: Path
    queries_csv: Path
    queries_dir: Path


@dataclass(frozen=True)
class _Walls:
    """All wall segments, as arrays so that ray casting is one vectorised operation.

    Segment ``i`` runs from ``starts[i]`` to ``starts[i] + edges[i]``; its visible face
    is on the right of that direction, so its texture reads left to right from the front.
    """

    starts: np.ndarray  # (S, 2) float64
    edges: np.ndarray  # (S, 2) float64
    lengths: np.ndarray  # (S,) float64
    normals: np.ndarray  # (S, 2) unit normals of the visible faces
    atlas_offsets: np.ndarray  # (S,) float64, texel column where each wall's texture starts


@dataclass(frozen=True)
class _Samples:
    """Texture coordinates of a set of pixels: where each lands and at which mip level."""

    u: np.ndarray  # texel coordinate, texel i covers [i, i + 1)
    v: np.ndarray
    level: np.ndarray  # int mip level


class Scene:
    """The textured room for one seed, ready to render any pose.

    Building it generates every texture (a few hundred ms), rendering is then cheap, so
    create one scene and render many views from it. Instances never change after
    construction (their arrays are read-only), so sharing one between tests is safe.
    """

    def __init__(
        self,
        seed: int,
        walls: _Walls,
        wall_mips: tuple[np.ndarray, ...],
        floor_mips: tuple[np.ndarray, ...],
        ceiling_mips: tuple[np.ndarray, ...],
    ) -> None:
        """Use :meth:`from_seed`; this only stores prebuilt parts."""
        self.seed = seed
        self._walls = walls
        self._wall_mips = wall_mips
        self._floor_mips = floor_mips
        self._ceiling_mips = ceiling_mips

    @classmethod
    def from_seed(cls, seed: int = 0) -> Scene:
        """Build the scene whose textures are determined by ``seed`` (a non-negative int)."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        segments = _wall_segments()
        textures = [
            _wall_texture(seed, index, length, normal)
            for index, (length, normal) in enumerate(
                (float(np.hypot(*(b - a))), _right_normal(b - a)) for a, b in segments
            )
        ]
        atlas, offsets = _pack_atlas(textures)
        walls = _make_walls(segments, offsets)
        xmin, ymin, xmax, ymax = ROOM_BOUNDS
        plane_w = round((xmax - xmin) * PLANE_TEXELS_PER_UNIT)
        plane_h = round((ymax - ymin) * PLANE_TEXELS_PER_UNIT)
        floor = _plane_texture(seed, "floor", plane_w, plane_h)
        ceiling = _plane_texture(seed, "ceiling", plane_w, plane_h)
        logger.debug("built synthetic scene for seed %d (%d walls, atlas %s)", seed, len(segments), atlas.shape)
        return cls(seed, walls, _mip_pyramid(atlas), _mip_pyramid(floor), _mip_pyramid(ceiling))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the room's free floor; obstacles: see :meth:`is_free`."""
        return ROOM_BOUNDS

    def is_free(self, x: float, y: float, margin: float = 0.5) -> bool:
        """Whether a camera can stand at (x, y) at least ``margin`` away from every wall.

        A camera too close to a wall sees one magnified patch of texture, which is a
        useless photo, so dataset poses are drawn with a margin; ``margin=0`` only asks
        whether the point is inside the room and outside every obstacle.
        """
        xmin, ymin, xmax, ymax = ROOM_BOUNDS
        if not (xmin + margin < x < xmax - margin and ymin + margin < y < ymax - margin):
            return False
        return all(_distance_to_box(x, y, box) > margin for box in INTERIOR_BOXES)

    def render(self, pose: Pose, width: int = 320, height: int = 240) -> np.ndarray:
        """Render the view from ``pose`` as an (height, width, 3) uint8 RGB image."""
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if not self.is_free(pose.x, pose.y, margin=0.0):
            raise ValueError(f"pose {pose} is outside the room or inside an obstacle")
        big_w, big_h = width * SUPERSAMPLE, height * SUPERSAMPLE
        if max(big_w, big_h) >= _REMAP_MAX_SIDE:
            raise ValueError(f"image size {width}x{height} is too large")
        image = self._render_full(pose, big_w, big_h)
        if SUPERSAMPLE == 1:
            return image
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    def _render_full(self, pose: Pose, width: int, height: int) -> np.ndarray:
        """Ray-cast one image at the working (supersampled) resolution."""
        focal = (width / 2.0) / math.tan(HFOV_RADIANS / 2.0)
        origin = np.array([pose.x, pose.y])
        rays = _column_rays(pose.heading, width, focal)
        depth, wall_index, along = _cast(origin, rays, self._walls)
        # Image-plane offset of each row below the optical axis, per unit of depth.
        row_slope = ((np.arange(height) + 0.5) - height / 2.0) / focal
        z = CAMERA_HEIGHT - row_slope[:, None] * depth[None, :]
        image = np.empty((height, width, 3), np.uint8)

        on_wall = (z >= 0.0) & (z <= WALL_HEIGHT)
        rows, cols = np.nonzero(on_wall)
        samples = _wall_samples(self._walls, rays, depth, wall_index, along, z, rows, cols, focal)
        image[rows, cols] = _sample_mips(self._wall_mips, samples)

        for mips, mask, plane_z in (
            (self._floor_mips, z < 0.0, 0.0),
            (self._ceiling_mips, z > WALL_HEIGHT, WALL_HEIGHT),
        ):
            rows, cols = np.nonzero(mask)
            samples = _plane_samples(origin, rays, row_slope, rows, cols, plane_z, focal)
            image[rows, cols] = _sample_mips(mips, samples)
        return image


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


def _wall_segments() -> list[tuple[np.ndarray, np.ndarray]]:
    """Every wall face as (start, end), oriented so its visible side is on the right.

    The outer walls run clockwise (seen from inside), obstacle faces counter-clockwise
    (seen from outside); with that orientation texture u grows left to right as seen by
    the viewer, so glyphs are not mirrored.
    """
    xmin, ymin, xmax, ymax = ROOM_BOUNDS
    corners = [(xmax, ymin), (xmin, ymin), (xmin, ymax), (xmax, ymax)]
    loops = [corners]
    for bx0, by0, bx1, by1 in INTERIOR_BOXES:
        loops.append([(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)])
    segments = []
    for loop in loops:
        for k, start in enumerate(loop):
            end = loop[(k + 1) % len(loop)]
            segments.append((np.array(start, float), np.array(end, float)))
    return segments


def _right_normal(edge: np.ndarray) -> np.ndarray:
    """Unit normal on the right of ``edge``: the side a wall segment is seen from."""
    return np.array([edge[1], -edge[0]]) / float(np.hypot(*edge))


def _make_walls(segments: list[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray) -> _Walls:
    starts = np.array([a for a, _ in segments])
    edges = np.array([b - a for a, b in segments])
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / lengths[:, None]
    for array in (starts, edges, lengths, normals, offsets):
        array.flags.writeable = False
    return _Walls(starts, edges, lengths, normals, offsets)


def _distance_to_box(x: float, y: float, box: tuple[float, float, float, float]) -> float:
    """Euclidean distance from a point to an axis-aligned box (0 inside it)."""
    bx0, by0, bx1, by1 = box
    dx = max(bx0 - x, 0.0, x - bx1)
    dy = max(by0 - y, 0.0, y - by1)
    return math.hypot(dx, dy)


def _column_rays(heading: float, width: int, focal: float) -> np.ndarray:
    """(W, 2) ray directions, one per column, with unit *forward* component.

    Because the forward component is 1, the ray parameter at a hit is the depth along
    the optical axis (not the Euclidean distance), which is exactly what a pinhole
    projection divides by - no fish-eye correction needed.
    """
    forward = np.array([math.cos(heading), math.sin(heading)])
    right = np.array([math.sin(heading), -math.cos(heading)])
    offsets = ((np.arange(width) + 0.5) - width / 2.0) / focal
    return forward[None, :] + offsets[:, None] * right[None, :]


def _cast(origin: np.ndarray, rays: np.ndarray, walls: _Walls) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest wall hit per ray: (depth, wall index, distance along that wall).

    Solves ``origin + t * ray = start + s * edge`` for every (ray, wall) pair with 2-D
    cross products and keeps the smallest positive ``t`` with ``0 <= s <= 1``.
    """
    to_start = walls.starts - origin  # (S, 2)
    denom = rays[:, 0:1] * walls.edges[None, :, 1] - rays[:, 1:2] * walls.edges[None, :, 0]  # (W, S)
    t_num = to_start[:, 0] * walls.edges[:, 1] - to_start[:, 1] * walls.edges[:, 0]  # (S,)
    s_num = to_start[None, :, 0] * rays[:, 1:2] - to_start[None, :, 1] * rays[:, 0:1]  # (W, S)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = t_num[None, :] / denom
        s = s_num / denom
    valid = (np.abs(denom) > 1e-12) & (t > 1e-9) & (s >= 0.0) & (s <= 1.0)
    t = np.where(valid, t, np.inf)
    index = np.argmin(t, axis=1)
    columns = np.arange(rays.shape[0])
    depth = t[columns, index]
    if not np.all(np.isfinite(depth)):
        raise RuntimeError("a ray escaped the room; the camera must be inside it")
    along = s[columns, index] * walls.lengths[index]
    return depth, index, along


def _mip_level(footprint: np.ndarray) -> np.ndarray:
    """Mip level for a texel footprint (texels per working pixel), rounded in log2."""
    with np.errstate(divide="ignore"):
        level = np.floor(np.log2(np.maximum(footprint, 1e-12)) + 0.5)
    return np.clip(level, 0, MIP_LEVELS - 1).astype(np.int32)


def _wall_samples(
    walls: _Walls,
    rays: np.ndarray,
    depth: np.ndarray,
    wall_index: np.ndarray,
    along: np.ndarray,
    z: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    focal: float,
) -> _Samples:
    """Texture coordinates for wall pixels: (position along the wall, height).

    The footprint is the geometric mean of the vertical one (depth / focal) and the
    horizontal one, which grows as 1/cos(incidence) when a wall is seen at a grazing
    angle.
    """
    ray_norm = np.hypot(rays[:, 0], rays[:, 1])
    normals = walls.normals[wall_index]
    cos_incidence = np.abs(rays[:, 0] * normals[:, 0] + rays[:, 1] * normals[:, 1]) / ray_norm
    vertical = WALL_TEXELS_PER_UNIT * depth / focal
    horizontal = vertical * ray_norm / np.maximum(cos_incidence, 1e-3)
    column_level = _mip_level(np.sqrt(vertical * horizontal))
    u = walls.atlas_offsets[wall_index] + along * WALL_TEXELS_PER_UNIT
    return _Samples(
        u=u[cols],
        v=(WALL_HEIGHT - z[rows, cols]) * WALL_TEXELS_PER_UNIT + _ATLAS_PAD,
        level=column_level[cols],
    )


def _plane_samples(
    origin: np.ndarray,
    rays: np.ndarray,
    row_slope: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    plane_z: float,
    focal: float,
) -> _Samples:
    """Texture coordinates for floor or ceiling pixels, by inverse projection.

    A pixel in a row whose ray drops ``row_slope`` per unit of depth meets the plane
    ``plane_z`` at depth ``(CAMERA_HEIGHT - plane_z) / row_slope``. Radially the texel
    footprint is foreshortened by depth / height, hence the squared depth below.
    """
    height = abs(CAMERA_HEIGHT - plane_z)
    depth = (CAMERA_HEIGHT - plane_z) / row_slope[rows]
    ray = rays[cols]
    x = origin[0] + depth * ray[:, 0]
    y = origin[1] + depth * ray[:, 1]
    tangential = PLANE_TEXELS_PER_UNIT * depth / focal
    radial = tangential * depth / height
    xmin, ymin, _, _ = ROOM_BOUNDS
    return _Samples(
        u=(x - xmin) * PLANE_TEXELS_PER_UNIT,
        v=(y - ymin) * PLANE_TEXELS_PER_UNIT,
        level=_mip_level(np.sqrt(tangential * radial)),
    )


# --- texture sampling ---------------------------------------------------------------


def _mip_pyramid(texture: np.ndarray) -> tuple[np.ndarray, ...]:
    """Gaussian pyramid of ``texture`` (level k is 2**k times coarser), read-only."""
    if max(texture.shape[:2]) >= _REMAP_MAX_SIDE:
        raise ValueError(f"texture of shape {texture.shape} is too large for cv2.remap")
    levels = [np.ascontiguousarray(texture)]
    for _ in range(1, MIP_LEVELS):
        levels.append(cv2.pyrDown(levels[-1]))
    for level in levels:
        level.flags.writeable = False
    return tuple(levels)


def _sample_mips(mips: tuple[np.ndarray, ...], samples: _Samples) -> np.ndarray:
    """Bilinearly sample each point from its own mip level; returns (N, 3) uint8."""
    out = np.empty((samples.u.size, 3), np.uint8)
    for level in np.unique(samples.level):
        chosen = samples.level == level
        scale = 0.5 ** int(level)
        # Texel i covers [i, i+1); cv2.remap puts texel centres at integers.
        x = samples.u[chosen] * scale - 0.5
        y = samples.v[chosen] * scale - 0.5
        out[chosen] = _remap_points(mips[int(level)], x, y)
    return out


def _remap_points(texture: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cv2.remap for a flat list of points, folded into rows to respect remap's limits."""
    n = x.size
    if n == 0:
        return np.empty((0, 3), np.uint8)
    cols = min(n, _REMAP_ROW)
    rows = -(-n // cols)
    map_x = np.zeros(rows * cols, np.float32)
    map_y = np.zeros(rows * cols, np.float32)
    map_x[:n] = x
    map_y[:n] = y
    sampled = cv2.remap(
        texture,
        map_x.reshape(rows, cols),
        map_y.reshape(rows, cols),
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return sampled.reshape(-1, 3)[:n]


# --- procedural textures ------------------------------------------------------------


def _pack_atlas(textures: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate wall textures side by side with replicated borders.

    One atlas lets every wall pixel of a view be sampled in one pass; returns the atlas
    and, per wall, the atlas column (texel coordinate) where its texture starts.
    """
    pad = _ATLAS_PAD
    padded = [cv2.copyMakeBorder(t, pad, pad, pad, pad, cv2.BORDER_REPLICATE) for t in textures]
    offsets = np.cumsum([0] + [p.shape[1] for p in padded[:-1]]).astype(np.float64) + _ATLAS_PAD
    return np.ascontiguousarray(np.concatenate(padded, axis=1)), offsets


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


def _wall_texture(seed: int, index: int, length: float, normal: np.ndarray) -> np.ndarray:
    """The texture of wall ``index``: its own random stream, palette and baked shading."""
    rng = np.random.default_rng([seed, 0, index])
    width = max(1, round(length * WALL_TEXELS_PER_UNIT))
    height = round(WALL_HEIGHT * WALL_TEXELS_PER_UNIT)
    texture = _procedural_texture(rng, width, height, WALL_TEXELS_PER_UNIT, _WALL_STYLE)
    light = abs(float(normal[0]) * _LIGHT_DIRECTION[0] + float(normal[1]) * _LIGHT_DIRECTION[1])
    return _shade(texture, 0.72 + 0.28 * light)


def _plane_texture(seed: int, which: str, width: int, height: int) -> np.ndarray:
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
