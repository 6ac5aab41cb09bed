"""The labels CSV is untrusted: every bad row is refused with a line that names it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from glueloc.core.errors import GluelocError
from glueloc.core.labels import LabelsError, read_labels


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.jpg").write_bytes(b"x")
    return folder


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_reads_rows_with_bom_and_extra_columns(tmp_path: Path, images: Path) -> None:
    csv = write(tmp_path, "\ufeffname,x,y,floor\na.jpg,1.5,-2,1\nsub/b.jpg,3,4e1,2\n")
    rows = read_labels(csv, images)
    assert [(r.name, r.x, r.y) for r in rows] == [("a.jpg", 1.5, -2.0), ("sub/b.jpg", 3.0, 40.0)]
    assert rows[1].path == (images / "sub" / "b.jpg").resolve()


@pytest.mark.parametrize(
    "body, expected",
    [
        ("a.jpg,nan,1\n", "x is not a finite number"),
        ("a.jpg,1,inf\n", "y is not a finite number"),
        ("a.jpg,1,-Infinity\n", "y is not a finite number"),
        ("a.jpg,one,1\n", "x is not a number"),
        ("a.jpg,,1\n", "x is empty"),
        (",1,1\n", "name is empty"),
        ("a.jpg,1,1,9\n", "4 fields, header has 3"),
        ("a.jpg,1\n", "2 fields, header has 3"),
        ("a.jpg,1,1\na.jpg,2,2\n", "already given on line 2"),
        ("../a.jpg,1,1\n", "leaves the image folder"),
        ("sub/../../x.jpg,1,1\n", "leaves the image folder"),
        ("/etc/passwd,1,1\n", "absolute path"),
        ("sub\\b.jpg,1,1\n", "backslash"),
        ("./a.jpg,1,1\n", "not in normal form"),
        ("a\x01.jpg,1,1\n", "control characters"),
        ("x" * 300 + ".jpg,1,1\n", "over 255 bytes"),
    ],
)
def test_bad_rows_are_refused_with_their_line(tmp_path: Path, images: Path, body: str, expected: str) -> None:
    csv = write(tmp_path, "name,x,y\n" + body)
    with pytest.raises(LabelsError) as info:
        read_labels(csv, images)
    assert expected in str(info.value)
    assert "labels.csv: line " in str(info.value)


def test_every_problem_is_listed_one_per_line(tmp_path: Path, images: Path) -> None:
    csv = write(tmp_path, "name,x,y\na.jpg,nan,1\nsub/b.jpg,1,zz\n../c.jpg,1,1\n")
    with pytest.raises(LabelsError) as info:
        read_labels(csv, images)
    assert len(info.value.problems) == 3
    assert len(str(info.value).splitlines()) == 3


def test_symlink_leaving_the_folder_is_refused(tmp_path: Path, images: Path) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    os.symlink(outside, images / "link.jpg")
    csv = write(tmp_path, "name,x,y\nlink.jpg,1,1\n")
    with pytest.raises(LabelsError, match="resolves outside the image folder"):
        read_labels(csv, images)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"name,x\na.jpg,1\n", "lacks column(s) y"),
        (b"file,x,y\na.jpg,1,1\n", "lacks column(s) name"),
        (b"name,x,y\n", "no image rows"),
        (b"name,x,y\n\xff\xfe.jpg,1,1\n", "not UTF-8"),
        (b"name,x,y\na\x00.jpg,1,1\n", "NUL bytes"),
        (b"name,x,x,y\na.jpg,1,1,1\n", "repeats column(s) x"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, images: Path, content: bytes, expected: str) -> None:
    with pytest.raises(GluelocError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        read_labels(write(tmp_path, content), images)


def test_missing_inputs(tmp_path: Path, images: Path) -> None:
    with pytest.raises(GluelocError, match="labels file not found"):
        read_labels(tmp_path / "none.csv", images)
    with pytest.raises(GluelocError, match="image folder not found"):
        read_labels(write(tmp_path, "name,x,y\na.jpg,1,1\n"), tmp_path / "nowhere")
