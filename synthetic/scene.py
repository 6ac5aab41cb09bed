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

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from glueloc.synthetic.textures import (PLANE_TEXELS_PER_UNIT, WALL_HEIGHT, WALL_TEXELS_PER_UNIT, plane_texture,
                                       wall_texture)

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
CAMERA_HEIGHT = 1.5
HFOV_RADIANS = math.radians(70.0)

#: Texels per scene unit. Walls are seen from 1-3 units, where one output pixel covers
#: about 1/100 of a unit, so 100 texels/unit keeps close-ups sharp; the floor and
#: ceiling are never nearer than ~2.8 units (outside the vertical field of view below
#: that) and are seen obliquely, so they need fewer.
#: Render at this multiple of the requested size, then area-downsample (anti-aliasing).
SUPERSAMPLE = 2
MIP_LEVELS = 4
#: Replicated border around each wall in the texture atlas, so that bilinear filtering
#: and the blur of coarser mip levels never bleed one wall's texture into another's.
_ATLAS_PAD = 32
#: OpenCV's remap refuses images with a side of SHRT_MAX or more.
_REMAP_MAX_SIDE = 32767
_REMAP_ROW = 4096

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
            wall_texture(seed, index, length, normal)
            for index, (length, normal) in enumerate(
                (float(np.hypot(*(b - a))), _right_normal(b - a)) for a, b in segments
            )
        ]
        atlas, offsets = _pack_atlas(textures)
        walls = _make_walls(segments, offsets)
        xmin, ymin, xmax, ymax = ROOM_BOUNDS
        plane_w = round((xmax - xmin) * PLANE_TEXELS_PER_UNIT)
        plane_h = round((ymax - ymin) * PLANE_TEXELS_PER_UNIT)
        floor = plane_texture(seed, "floor", plane_w, plane_h)
        ceiling = plane_texture(seed, "ceiling", plane_w, plane_h)
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


