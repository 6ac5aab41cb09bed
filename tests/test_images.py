"""Untrusted image files: decoded safely into RGB, or refused with one clear reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glueloc.core.errors import BadImageError
from glueloc.vision.images import load_image


def save(tmp_path: Path, name: str, image: Image.Image, **kwargs: object) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def gradient(width: int = 64, height: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 4 % 256, y * 5 % 256, (x + y) % 256], axis=2).astype(np.uint8)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a classic decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_rgb_jpeg_decodes_and_hashes(tmp_path: Path) -> None:
    path = save(tmp_path, "a.jpg", Image.fromarray(gradient()), quality=95)
    image = load_image(path)
    assert image.rgb.shape == (48, 64, 3) and image.rgb.dtype == np.uint8
    assert (image.width, image.height) == (64, 48)
    import hashlib

    assert image.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "mode, name",
    [("L", "grey.png"), ("RGBA", "alpha.png"), ("CMYK", "cmyk.jpg"), ("P", "palette.png"), ("LA", "greyalpha.png")],
)
def test_modes_become_rgb(tmp_path: Path, mode: str, name: str) -> None:
    path = save(tmp_path, name, Image.fromarray(gradient()).convert(mode))
    image = load_image(path)
    assert image.rgb.shape == (48, 64, 3)
    assert image.rgb.std() > 10  # content survived, not a blank conversion


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    data = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(data).save(path)
    image = load_image(path)
    assert image.rgb[..., 0].max() == 255 and image.rgb[..., 0].min() == 0
    assert len(np.unique(image.rgb[..., 0])) > 200  # a ramp, not a clipped step


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(tmp_path, "rot.jpg", Image.fromarray(gradient(64, 48)), exif=exif.tobytes())
    image = load_image(path)
    assert (image.width, image.height) == (48, 64)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"this is not an image at all" * 10, "not a decodable image"),
        (png_with_declared_size(100_000, 100_000), "decompression bomb"),
        (png_with_declared_size(7000, 7000), "exceeds the 40000000-pixel limit"),
        (png_with_declared_size(1, 1), "too small"),
    ],
    ids=["zero-bytes", "garbage", "bomb-header", "over-limit-header", "one-pixel"],
)
def test_bad_files_are_refused(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match=expected):
        load_image(path)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(gradient(256, 256)).save(buffer, format="JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        load_image(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(tmp_path / "dir.jpg")


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = save(tmp_path, "a.png", Image.fromarray(gradient()))
    with pytest.raises(BadImageError, match="exceeds the 1000-pixel limit"):
        load_image(path, max_pixels=1000)
