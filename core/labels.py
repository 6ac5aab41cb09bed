"""Read the labels CSV (``name,x,y``) and refuse anything unsafe or ambiguous.

The CSV is untrusted input. Every problem in it is found before the database is
touched, and reported one line per problem, so a rejected CSV changes nothing:

* a header with ``name``, ``x`` and ``y`` is required (extra columns are ignored; a
  UTF-8 byte-order mark is tolerated); every row must have as many fields as the header;
* coordinates must be finite numbers;
* a name appears at most once;
* a name is a relative path that stays inside the image folder, after symlinks are
  resolved (no ``..``, no absolute paths, no control characters, no link leading out).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from glueloc.core.errors import GluelocError

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("name", "x", "y")
MAX_NAME_BYTES = 1024  # whole relative path
MAX_COMPONENT_BYTES = 255  # one path component (the usual filesystem limit)
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class LabelRow:
    """One validated CSV row; ``path`` is inside the image folder."""

    line: int
    name: str
    x: float
    y: float
    path: Path


class LabelsError(GluelocError):
    """The CSV was refused; ``problems`` holds one line per problem."""

    def __init__(self, source: Path, problems: list[str]) -> None:
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        lines = [f"{source.name}: {p}" for p in shown]
        if more:
            lines.append(f"{source.name}: ... and {more} more problems")
        super().__init__("\n".join(lines))


def _parse_coordinate(text: str | None, column: str) -> tuple[float | None, str | None]:
    if text is None or not text.strip():
        return None, f"{column} is empty"
    try:
        value = float(text)
    except ValueError:
        return None, f"{column} is not a number ({text.strip()[:40]!r})"
    if not math.isfinite(value):
        return None, f"{column} is not a finite number ({text.strip()!r})"
    return value, None


def check_name(name: str, images_root: Path) -> tuple[Path | None, str | None]:
    """Resolve ``name`` under ``images_root`` (already resolved); returns (path, problem)."""
    if not name:
        return None, "name is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None, "name contains control characters"
    if "\\" in name:
        return None, f"name {name!r} contains a backslash; use '/' between folders"
    encoded = name.encode("utf-8", errors="surrogateescape")
    if len(encoded) > MAX_NAME_BYTES:
        return None, f"name is {len(encoded)} bytes long (limit {MAX_NAME_BYTES})"
    pure = PurePosixPath(name)
    if pure.is_absolute():
        return None, f"name {name!r} is an absolute path; names are relative to the image folder"
    if any(part == ".." for part in pure.parts):
        return None, f"name {name!r} leaves the image folder ('..')"
    if any(len(part.encode("utf-8", errors="surrogateescape")) > MAX_COMPONENT_BYTES for part in pure.parts):
        return None, f"name {name[:40]!r}... has a path component over {MAX_COMPONENT_BYTES} bytes"
    if pure.as_posix() != name:
        return None, f"name {name!r} is not in normal form (write it as {pure.as_posix()!r})"
    path = images_root.joinpath(*pure.parts)
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:
        return None, f"name {name!r} cannot be resolved ({exc})"
    if not resolved.is_relative_to(images_root):
        return None, f"name {name!r} resolves outside the image folder (symlink?)"
    if resolved == images_root:
        return None, f"name {name!r} is the image folder itself, not a file in it"
    return resolved, None


def open_csv(csv_path: Path, kind: str, expected: str) -> tuple[list[str], Any]:
    """A user's CSV decoded safely, as (header, reader of the remaining rows).

    Untrusted text: UTF-8 only (a byte-order mark tolerated), no NUL bytes, a header
    required. ``kind`` names the file in "not found" ("labels file"); ``expected`` says
    what header was wanted when there is none. The reader's ``line_num`` gives each row's line.
    """
    if not csv_path.is_file():
        raise GluelocError(f"{csv_path}: {kind} not found")
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GluelocError(f"{csv_path.name}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise GluelocError(f"{csv_path.name}: cannot read ({exc.strerror})") from None
    if "\x00" in text:
        raise GluelocError(f"{csv_path.name}: contains NUL bytes; not a CSV text file")
    # newline="": a quoted field keeps its line breaks (and is then refused as a control character).
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise GluelocError(f"{csv_path.name}: empty file; expected {expected}") from None
    return header, reader


def read_labels(csv_path: Path, images_dir: Path) -> list[LabelRow]:
    """Parse and validate the whole CSV; raises :class:`LabelsError` listing every problem."""
    header, reader = open_csv(csv_path, "labels file", "a header 'name,x,y'")
    if not images_dir.is_dir():
        raise GluelocError(f"{images_dir}: image folder not found")
    images_root = images_dir.resolve()
    columns = [c.strip().lower() for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise GluelocError(
            f"{csv_path.name}: header {','.join(header)!r} lacks column(s) {', '.join(missing)}; expected 'name,x,y'"
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1 and c in REQUIRED_COLUMNS})
    if duplicated:
        raise GluelocError(f"{csv_path.name}: header repeats column(s) {', '.join(duplicated)}")
    where = {c: columns.index(c) for c in REQUIRED_COLUMNS}

    rows: list[LabelRow] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue  # blank lines are harmless
            if len(fields) != len(header):
                problems.append(f"line {line}: {len(fields)} fields, header has {len(header)}")
                continue
            name = fields[where["name"]]
            x, x_problem = _parse_coordinate(fields[where["x"]], "x")
            y, y_problem = _parse_coordinate(fields[where["y"]], "y")
            path, name_problem = check_name(name, images_root)
            row_problems = [p for p in (name_problem, x_problem, y_problem) if p]
            if name and not name_problem:
                if name in first_line:
                    row_problems.append(f"name {name!r} already given on line {first_line[name]}")
                else:
                    first_line[name] = line
            if row_problems:
                problems.extend(f"line {line}: {p}" for p in row_problems)
                continue
            assert path is not None and x is not None and y is not None
            rows.append(LabelRow(line=line, name=name, x=x, y=y, path=path))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: malformed CSV ({exc})")
    if problems:
        raise LabelsError(csv_path, problems)
    if not rows:
        raise GluelocError(f"{csv_path.name}: no image rows after the header")
    logger.debug("read %d label rows from %s", len(rows), csv_path)
    return rows


def relative_name(path: Path, images_dir: Path) -> str:
    """The database name of a file under ``images_dir`` ('/'-separated)."""
    return Path(os.path.relpath(path, images_dir)).as_posix()
