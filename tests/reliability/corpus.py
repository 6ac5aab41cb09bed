"""A generated corpus of malformed inputs: image files and labels CSVs.

Every case says what glueloc must do with it, decided by the input (not by whatever
glueloc happens to do): an image that can be decoded safely into something matchable is
*accepted*; a file that cannot (corrupt, truncated, empty, too small, a pixel bomb, not a
file) is *rejected* on its own — the rest of the CSV still lands —; a CSV that is unsafe or
ambiguous (bad numbers, bad names, bad structure, bad encoding) is *refused* whole and
the database is left byte-identical.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ACCEPTED, REJECTED, REFUSED = "accepted", "rejected", "refused"


@dataclass(frozen=True)
class ImageCase:
    label: str
    filename: str
    make: Callable[[Path], None]  # writes the file (or directory, link...) at the given path
    expect: str  # ACCEPTED or REJECTED


@dataclass(frozen=True)
class CsvCase:
    label: str
    text: bytes  # the CSV; "{good}" is replaced by the name of a good, not yet indexed image
    expect: str  # ACCEPTED, REJECTED (the row's file is unusable; the others land) or REFUSED
    prepare: Callable[[Path, Path, str], None] | None = None  # (images dir, outside dir, good name)


def _picture(size: tuple[int, int] = (160, 120), seed: int = 0) -> np.ndarray:
    """A textured RGB picture SIFT finds keypoints in (random blocks, upscaled)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))[: size[1], : size[0]]


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _writer(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge image, with one tiny compressed row of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 marker is rewritten to claim another size."""
    at = jpeg.index(b"\xff\xc0") + 5
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4:]


def _exif_rotated(rgb: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encoded(image, "JPEG", exif=exif.tobytes())


def image_cases() -> list[ImageCase]:
    rgb = _picture()
    pil = Image.fromarray(rgb)
    jpeg, png = _encoded(pil, "JPEG", quality=90), _encoded(pil, "PNG")
    rng = random.Random(5)
    cases: list[ImageCase] = []
    add = cases.append
    for ext in ("jpg", "png"):
        add(ImageCase(f"zero-byte .{ext}", f"zero.{ext}", _writer(b""), REJECTED))
    for fraction in (0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        add(ImageCase(f"JPEG truncated to {fraction:.0%}", f"trunc{int(fraction * 100)}.jpg",
                      _writer(jpeg[: int(len(jpeg) * fraction)]), REJECTED))
        add(ImageCase(f"PNG truncated to {fraction:.0%}", f"trunc{int(fraction * 100)}.png",
                      _writer(png[: int(len(png) * fraction)]), REJECTED))
    for size in (1, 16, 1000, 60000):
        for ext in ("jpg", "png", "bmp"):
            add(ImageCase(f"{size} random bytes as .{ext}", f"garbage{size}.{ext}",
                          _writer(rng.randbytes(size)), REJECTED))
    add(ImageCase("JPEG magic then garbage", "magic.jpg", _writer(b"\xff\xd8\xff\xe0" + rng.randbytes(4000)), REJECTED))
    add(ImageCase("PNG signature then garbage", "magic.png", _writer(b"\x89PNG\r\n\x1a\n" + rng.randbytes(4000)), REJECTED))
    add(ImageCase("text file named .jpg", "text.jpg", _writer(b"name,x,y\nthis is not an image\n"), REJECTED))
    add(ImageCase("HTML page named .png", "page.png", _writer(b"<html><body>404</body></html>"), REJECTED))
    add(ImageCase("PNG content named .jpg", "png-inside.jpg", _writer(png), ACCEPTED))
    add(ImageCase("JPEG content named .png", "jpeg-inside.png", _writer(jpeg), ACCEPTED))
    add(ImageCase("JPEG named without extension", "noextension", _writer(jpeg), ACCEPTED))
    add(ImageCase("grey JPEG", "grey.jpg", _writer(_encoded(pil.convert("L"), "JPEG")), ACCEPTED))
    add(ImageCase("grey PNG", "grey.png", _writer(_encoded(pil.convert("L"), "PNG")), ACCEPTED))
    grey16 = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    add(ImageCase("16-bit grey PNG", "grey16.png", _writer(_encoded(grey16, "PNG")), ACCEPTED))
    add(ImageCase("16-bit grey TIFF", "grey16.tif", _writer(_encoded(grey16, "TIFF")), ACCEPTED))
    add(ImageCase("RGBA PNG", "alpha.png", _writer(_encoded(pil.convert("RGBA"), "PNG")), ACCEPTED))
    half_transparent = pil.convert("RGBA")
    half_transparent.putalpha(Image.fromarray((np.arange(160)[None, :].repeat(120, 0) % 256).astype(np.uint8)))
    add(ImageCase("PNG with varying alpha", "alpha-ramp.png", _writer(_encoded(half_transparent, "PNG")), ACCEPTED))
    add(ImageCase("grey+alpha PNG", "la.png", _writer(_encoded(pil.convert("LA"), "PNG")), ACCEPTED))
    add(ImageCase("palette PNG", "palette.png", _writer(_encoded(pil.convert("P"), "PNG")), ACCEPTED))
    add(ImageCase("palette PNG with transparency", "palette-t.png",
                  _writer(_encoded(pil.convert("P"), "PNG", transparency=0)), ACCEPTED))
    add(ImageCase("CMYK JPEG", "cmyk.jpg", _writer(_encoded(pil.convert("CMYK"), "JPEG")), ACCEPTED))
    add(ImageCase("1-bit PNG", "bilevel.png", _writer(_encoded(pil.convert("1"), "PNG")), ACCEPTED))
    add(ImageCase("progressive JPEG", "progressive.jpg", _writer(_encoded(pil, "JPEG", progressive=True)), ACCEPTED))
    for orientation in range(1, 9):
        add(ImageCase(f"EXIF orientation {orientation}", f"exif{orientation}.jpg",
                      _writer(_exif_rotated(rgb, orientation)), ACCEPTED))
    for fmt, ext in (("BMP", "bmp"), ("TIFF", "tif"), ("GIF", "gif"), ("WEBP", "webp"), ("PPM", "ppm")):
        add(ImageCase(f"{fmt} file", f"other.{ext}", _writer(_encoded(pil, fmt)), ACCEPTED))
    for width, height in ((1, 1), (2, 2), (7, 7), (1, 1000), (1000, 1), (5, 300)):
        small = Image.fromarray(_picture((max(width, 8), max(height, 8)))).crop((0, 0, width, height))
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png")):
            add(ImageCase(f"tiny {width}x{height} {fmt}", f"tiny{width}x{height}.{ext}",
                          _writer(_encoded(small, fmt)), REJECTED))
    add(ImageCase("8x8 PNG (smallest matchable)", "tiny8x8.png",
                  _writer(_encoded(Image.fromarray(_picture((8, 8))), "PNG")), ACCEPTED))
    for width, height in ((100_000, 100_000), (65_535, 65_535), (50_000, 1_000), (7_000, 7_000)):
        add(ImageCase(f"PNG declaring {width}x{height}", f"bomb{width}x{height}.png",
                      _writer(png_declaring(width, height)), REJECTED))
        add(ImageCase(f"JPEG declaring {width}x{height}", f"bomb{width}x{height}.jpg",
                      _writer(_jpeg_declaring(jpeg, min(width, 65_535), min(height, 65_535))), REJECTED))
    gif_header = b"GIF89a" + struct.pack("<HH", 65_535, 65_535) + b"\x00\x00\x00" + b"\x2c" + b"\x00" * 9 + b"\x02\x02\x44\x01\x00;"
    add(ImageCase("GIF declaring 65535x65535", "bomb.gif", _writer(gif_header), REJECTED))
    bmp = bytearray(_encoded(pil, "BMP"))
    bmp[18:26] = struct.pack("<ii", 60_000, 60_000)
    add(ImageCase("BMP declaring 60000x60000", "bomb.bmp", _writer(bytes(bmp)), REJECTED))
    add(ImageCase("a directory named .jpg", "folder.jpg", lambda path: path.mkdir(), REJECTED))
    add(ImageCase("a named pipe named .jpg", "pipe.jpg", lambda path: __import__("os").mkfifo(path), REJECTED))
    add(ImageCase("a dangling symlink", "dangling.jpg", lambda path: path.symlink_to(path.parent / "nowhere.jpg"), REJECTED))
    return cases


def csv_cases() -> list[CsvCase]:
    header = b"name,x,y\n"
    good = b"{good},1.5,2.5\n"
    cases: list[CsvCase] = []
    add = cases.append
    # Structure and encoding that are fine.
    add(CsvCase("UTF-8 byte-order mark", b"\xef\xbb\xbf" + header + good, ACCEPTED))
    add(CsvCase("CRLF line endings", (header + good).replace(b"\n", b"\r\n"), ACCEPTED))
    add(CsvCase("extra column", b"name,x,y,floor\n{good},1.5,2.5,3\n", ACCEPTED))
    add(CsvCase("columns in another order", b"y,name,x\n2.5,{good},1.5\n", ACCEPTED))
    add(CsvCase("quoted fields", b'"name","x","y"\n"{good}","1.5","2.5"\n', ACCEPTED))
    add(CsvCase("blank lines", header + b"\n\n" + good + b"\n", ACCEPTED))
    add(CsvCase("header in capitals", b"NAME,X,Y\n" + good, ACCEPTED))
    add(CsvCase("exponent notation", header + b"{good},1.5e1,-2E-1\n", ACCEPTED))
    add(CsvCase("header only, no rows", header, REFUSED))
    # Numbers.
    for column in ("x", "y"):
        for bad in (b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e999", b"-1e400", b"", b"  ", b"one", b"1,5",
                    b"0x10", b"1.2.3", b"--1", b"1e", b"\xe2\x88\x9e"):
            row = b"{good},%s,2.5\n" % (b'"' + bad + b'"') if column == "x" else b"{good},1.5,%s\n" % (b'"' + bad + b'"')
            add(CsvCase(f"{column} = {bad.decode(errors='replace')!r}", header + row, REFUSED))
    # Fields and header.
    add(CsvCase("empty name", header + b",1,2\n" + good, REFUSED))
    add(CsvCase("row with a missing field", header + b"{good},1.5\n", REFUSED))
    add(CsvCase("row with an extra field", header + b"{good},1.5,2.5,9\n", REFUSED))
    add(CsvCase("header lacks y", b"name,x\n{good},1.5\n", REFUSED))
    add(CsvCase("header with other names", b"file,east,north\n{good},1.5,2.5\n", REFUSED))
    add(CsvCase("no header", good, REFUSED))
    add(CsvCase("header repeats x", b"name,x,x,y\n{good},1,1,2\n", REFUSED))
    add(CsvCase("semicolon separated", b"name;x;y\n{good};1.5;2.5\n", REFUSED))
    add(CsvCase("empty file", b"", REFUSED))
    add(CsvCase("duplicate name, same position", header + good + good, REFUSED))
    add(CsvCase("duplicate name, other position", header + good + b"{good},9,9\n", REFUSED))
    # Encoding.
    add(CsvCase("Latin-1 byte in a name", header + b"caf\xe9.jpg,1,2\n" + good, REFUSED))
    add(CsvCase("invalid UTF-8 sequence", header + b"\xff\xfe\xfd.jpg,1,2\n", REFUSED))
    add(CsvCase("UTF-16 file", (header + good).decode().encode("utf-16"), REFUSED))
    add(CsvCase("NUL byte", header + b"a\x00b.jpg,1,2\n" + good, REFUSED))
    add(CsvCase("binary garbage", bytes(random.Random(3).randbytes(2000)), REFUSED))
    # Names that must not reach outside the folder or confuse it.
    for name in (b"../outside.jpg", b"../../etc/passwd", b"sub/../../outside.jpg", b"/etc/passwd",
                 b"/tmp/outside.jpg", b"./{good}", b"sub//x.jpg", b"sub/./x.jpg", b".", b"..", b"/root/x.jpg",
                 b"a\\..\\..\\outside.jpg", b"tab\there.jpg", b"bell\x07.jpg", b"del\x7f.jpg", b"x" * 256 + b".jpg",
                 b"d/" * 600 + b"x.jpg", b"\xc3\xa9" * 200 + b".jpg"):
        add(CsvCase(f"name {name[:40]!r}", header + b'"' + name + b'",1,2\n' + good, REFUSED))
    add(CsvCase("name of a missing file", header + b"missing.jpg,1,2\n" + good, REJECTED))
    add(CsvCase("deep path to a missing file", header + b"d/" * 300 + b"x.jpg,1,2\n" + good, REJECTED))
    add(CsvCase("name of a subfolder", header + b"sub,1,2\n" + good, REJECTED,
                prepare=lambda images, outside, good: (images / "sub").mkdir()))
    add(CsvCase("name with a newline inside quotes", header + b'"a\nb.jpg",1,2\n' + good, REFUSED))
    add(CsvCase("symlink leaving the folder", header + b"escape.jpg,1,2\n" + good, REFUSED,
                prepare=lambda images, outside, good: (images / "escape.jpg").symlink_to(outside / "secret.jpg")))
    add(CsvCase("symlinked folder leaving the folder", header + b"linkdir/secret.jpg,1,2\n" + good, REFUSED,
                prepare=lambda images, outside, good: (images / "linkdir").symlink_to(outside, target_is_directory=True)))
    add(CsvCase("symlink inside the folder", header + b"alias.jpg,1,2\n", ACCEPTED,
                prepare=lambda images, outside, good: (images / "alias.jpg").symlink_to(images / good)))
    return cases
