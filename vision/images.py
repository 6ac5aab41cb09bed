"""Decode untrusted image files once, safely.

Every image enters glueloc through :func:`load_image`: the file is read once (its bytes
give both the content hash and the pixels), its declared size is checked *before* the
pixels are decoded so a pixel bomb costs nothing, EXIF orientation is applied, and every
mode (grey, 16-bit, alpha, CMYK, palette) becomes 8-bit RGB so extractors see one format.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from glueloc.core.errors import BadImageError

logger = logging.getLogger(__name__)

#: Largest image (in pixels) decoded by default: 40 MP covers any phone photo while a
#: crafted header claiming 100k x 100k is refused before any pixel is allocated.
DEFAULT_MAX_PIXELS = 40_000_000
#: Largest file read, for the same reason (a 4 GB "JPEG" is not a photo).
DEFAULT_MAX_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image: RGB pixels plus what the database records about the file."""

    rgb: np.ndarray  # (H, W, 3) uint8
    sha256: str
    width: int
    height: int
    # The file's size and mtime, read *before* its bytes: a later run that finds both
    # unchanged trusts the hash without re-reading (a change after this stat makes the
    # next stat differ, so the fast path can only be too careful, never wrong).
    file_size: int = 0
    file_mtime_ns: int = 0


def sha256_file(path: Path) -> str:
    """Content hash of a file, read in chunks (used by deep audits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling 16/32-bit data instead of clipping it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        top = float(data.max()) if data.size else 0.0
        scale = 255.0 / top if top > 255.0 else 1.0
        image = Image.fromarray(np.clip(data * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white so transparent regions do not become arbitrary colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(
    path: Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DecodedImage:
    """Read, hash, size-check and decode one image file.

    Raises :class:`BadImageError` with a one-line reason for anything that is not a
    decodable image of acceptable size; never returns a partially decoded image.
    """
    try:
        status = path.stat()
        size = status.st_size
    except FileNotFoundError:
        raise BadImageError(path.name, "file not found") from None
    except OSError as exc:
        raise BadImageError(path.name, f"cannot read ({exc.strerror})") from None
    if not path.is_file():
        raise BadImageError(path.name, "not a regular file")
    if size == 0:
        raise BadImageError(path.name, "empty file (0 bytes)")
    if size > max_bytes:
        raise BadImageError(path.name, f"file of {size} bytes exceeds the {max_bytes}-byte limit")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(path.name, f"cannot read ({exc.strerror})") from None
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise BadImageError(path.name, f"declared size {width}x{height} is empty")
                if width * height > max_pixels:
                    raise BadImageError(
                        path.name,
                        f"declared size {width}x{height} exceeds the {max_pixels}-pixel limit (possible decompression bomb)",
                    )
                image.load()  # raises on truncated or corrupt data
                image = ImageOps.exif_transpose(image)
                rgb = np.array(_to_rgb8(image), dtype=np.uint8)  # a writable copy (torch wants one)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(
            path.name, "declared size exceeds the decoder's pixel limit (possible decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        raise BadImageError(path.name, "not a decodable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(path.name, f"corrupt or truncated image ({exc})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 8:
        raise BadImageError(path.name, f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small to match")
    return DecodedImage(rgb=np.ascontiguousarray(rgb), sha256=sha, width=rgb.shape[1], height=rgb.shape[0],
                        file_size=size, file_mtime_ns=status.st_mtime_ns)
