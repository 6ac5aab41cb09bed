"""glueloc serve: the HTTP API on the synthetic room — the CLI's answers, one-line refusals,
a token, a fresh snapshot after an index run, and no write to the database."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from glueloc.cli import app as cli
from glueloc.query.localizer import Localizer
from glueloc.serve import ServeOptions, create_app
from glueloc.storage.layout import Layout
from glueloc.storage.lock import WriterLock
from glueloc.synthetic import SyntheticDataset
from tests.helpers import run_index, tree_digest
from tests.test_images import png_with_declared_size


def client(db: Path, **options: object) -> TestClient:
    return TestClient(create_app(Layout.at(db), ServeOptions(**options)), raise_server_exceptions=False)  # type: ignore[arg-type]


def upload(path: Path, field: str = "image") -> dict:
    return {"files": {field: (path.name, path.read_bytes(), "image/jpeg")}}


def stores(db: Path) -> dict[str, str]:
    """Every file of the database but SQLite's own shared-memory and log files."""
    return {name: digest for name, digest in tree_digest(db).items() if not name.endswith(("-wal", "-shm"))}


def test_locate_answers_as_the_cli_does_and_writes_nothing(indexed: Path, scene: SyntheticDataset) -> None:
    before = stores(indexed)
    with client(indexed) as service:
        assert service.get("/health").json()["images"] == 24
        for photo in sorted(scene.queries_dir.glob("*.jpg")):
            answer = service.post("/locate", **upload(photo))
            assert answer.status_code == 200, answer.text
            cli_answer = json.loads(CliRunner().invoke(cli, ["query", str(photo), "--db", str(indexed), "--json"]).stdout)
            served = answer.json()
            assert (served["query"], served["x"], served["y"]) == (photo.name, cli_answer["x"], cli_answer["y"])
            assert [n["name"] for n in served["neighbours"]] == [n["name"] for n in cli_answer["neighbours"]]
        best = served["neighbours"][0]
        thumb = service.get(best["thumb"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        picture = service.post("/match.png", data={"neighbour": best["name"]}, **upload(photo))
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
        assert service.get("/map.png", params={"x": 1.0, "y": 2.0}).content.startswith(b"\x89PNG")
        assert service.get("/db").json()["images"] == 24
        page = service.get("/")
        assert page.status_code == 200 and 'id="file"' in page.text
    assert stores(indexed) == before


@pytest.mark.parametrize("case", ["not an image", "pixel bomb", "empty", "wrong field", "not multipart",
                                  "too large", "no such neighbour", "no such thumb"])
def test_bad_requests_get_one_clear_message(indexed: Path, tmp_path: Path, case: str) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg at all")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_declared_size(30000, 30000))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    good = sorted((indexed.parent / "images").glob("*.jpg"))[0]
    with client(indexed, max_bytes=200_000) as service:
        response = {
            "not an image": lambda: service.post("/locate", **upload(bad)),
            "pixel bomb": lambda: service.post("/locate", **upload(bomb)),
            "empty": lambda: service.post("/locate", **upload(empty)),
            "wrong field": lambda: service.post("/locate", **upload(good, field="photo")),
            "not multipart": lambda: service.post("/locate", content=good.read_bytes()),
            "too large": lambda: service.post("/locate", files={"image": ("big.jpg", b"x" * 300_000, "image/jpeg")}),
            "no such neighbour": lambda: service.post("/match.png", data={"neighbour": "nope.jpg"}, **upload(good)),
            "no such thumb": lambda: service.get("/thumb/99999"),
        }[case]()
    expected = {"not an image": 400, "pixel bomb": 400, "empty": 400, "wrong field": 422, "not multipart": 415,
                "too large": 413, "no such neighbour": 404, "no such thumb": 404}[case]
    assert response.status_code == expected, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    if case == "pixel bomb":
        assert "decompression bomb" in detail


def test_an_unexpected_failure_is_a_500_with_one_line(indexed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Localizer, path: Path) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Localizer, "locate", broken)
    with client(indexed) as service:
        response = service.post("/locate", **upload(sorted((indexed.parent / "images").glob("*.jpg"))[0]))
    assert response.status_code == 500 and response.json() == {"detail": "internal error: the service log has the details"}


def test_a_token_guards_everything_but_the_page_and_health(indexed: Path) -> None:
    photo = sorted((indexed.parent / "images").glob("*.jpg"))[0]
    with client(indexed, token="s3cret") as service:
        assert service.get("/health").status_code == 200 and service.get("/").status_code == 200
        refused = service.post("/locate", **upload(photo))
        assert refused.status_code == 401 and "X-Glueloc-Token" in refused.json()["detail"]
        assert service.get("/points", headers={"X-Glueloc-Token": "wrong"}).status_code == 401
        assert service.post("/locate", headers={"X-Glueloc-Token": "s3cret"}, **upload(photo)).status_code == 200
        assert service.get("/points", params={"token": "s3cret"}).status_code == 200


def test_serving_beyond_loopback_needs_a_token(indexed: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--db", str(indexed), "--host", "0.0.0.0"], env={"GLUELOC_SERVE_TOKEN": ""})
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == ("error: serving on 0.0.0.0 (not loopback) needs a token: "
                                                      "--token or $GLUELOC_SERVE_TOKEN")


def test_a_finished_index_run_is_picked_up_without_restart(workdir: Path, scene: SyntheticDataset) -> None:
    rows = list(csv.reader(open(workdir / "labels.csv", encoding="utf-8")))
    (workdir / "half.csv").write_text("\n".join(",".join(r) for r in rows[:13]) + "\n")
    db = workdir / "db"
    run_index(db, workdir / "half.csv", workdir / "images")
    with client(db, reload_seconds=3600) as service:  # reloads are driven by hand below
        warm = service.app.state.warm
        assert service.get("/health").json()["images"] == 12
        assert warm.refresh() is False  # nothing committed since it opened
        run_index(db, workdir / "labels.csv", workdir / "images")
        assert service.get("/health").json()["images"] == 12  # still the snapshot it opened
        with WriterLock(Layout.at(db)):  # a writer at work: its batches wait for its end
            assert warm.refresh() is False
        assert warm.refresh() is True
        assert service.get("/health").json()["images"] == 24
        answer = service.post("/locate", **upload(sorted(scene.queries_dir.glob("*.jpg"))[0]))
        assert answer.status_code == 200
    shutil.rmtree(db)
