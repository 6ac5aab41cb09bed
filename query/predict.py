"""Locate every image of a folder into a CSV (Kaggle format ``id,x,y`` + confidence), resumably.

Each answer is appended and synced as soon as it exists, so an interrupted run loses at
most the row being written; the next run keeps every complete row, drops a torn last
line, and continues with the images not yet answered.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glueloc.core.errors import BadImageError, GluelocError
from glueloc.query.localizer import Localizer

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
HEADER = ["id", "x", "y", "confidence"]


@dataclass
class PredictSummary:
    written: int = 0
    resumed: int = 0
    failures: list[str] = field(default_factory=list)


def _complete_rows(path: Path) -> set[str]:
    """Ids already answered; truncates a torn last line (no newline) left by a crash."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    if not rows:
        return set()
    if rows[0] != HEADER:
        raise GluelocError(f"{path} exists and is not a glueloc predictions file (header {rows[0]}); choose another -o")
    return {row[0] for row in rows[1:] if row}


def list_images(folder: Path) -> list[Path]:
    """The images ``predict`` locates: files of the folder with an image suffix, sorted."""
    if not folder.is_dir():
        raise GluelocError(f"{folder}: image folder not found")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise GluelocError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def predict_folder(localizer: Localizer, folder: Path, output: Path,
                   progress: Callable[[int], None] | None = None) -> PredictSummary:
    images = list_images(folder)
    done = _complete_rows(output)
    summary = PredictSummary(resumed=len(done & {p.name for p in images}))
    fresh = not output.exists() or output.stat().st_size == 0
    with open(output, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if fresh:
            writer.writerow(HEADER)
        if progress:
            progress(summary.resumed)
        for path in images:
            if path.name in done:
                continue
            try:
                result = localizer.locate(path)
            except BadImageError as exc:
                summary.failures.append(str(exc))
                if progress:
                    progress(1)
                continue
            if result.x is None:
                summary.failures.append(f"{path.name}: the database returned no candidate")
            else:
                writer.writerow([path.name, f"{result.x:.6f}", f"{result.y:.6f}", f"{result.confidence:.3f}"])
                handle.flush()
                os.fsync(handle.fileno())
                summary.written += 1
            if progress:
                progress(1)
    return summary
