"""glueloc.api: index, calibrate, audit and locate from a program, as the CLI does."""

from __future__ import annotations

from pathlib import Path

from glueloc import api
from glueloc.synthetic import SyntheticDataset


def test_index_audit_and_locate_through_the_api(scene: SyntheticDataset, tmp_path: Path) -> None:
    db = tmp_path / "db"
    summary = api.index(db, scene.labels_csv, scene.images_dir, api.IndexOptions(extractor="sift"))
    assert (summary.added, summary.outcome) == (24, "completed")
    assert api.audit(api.Layout.at(db)).clean
    truth = {row.name: (row.x, row.y) for row in api.read_labels(scene.queries_csv, scene.queries_dir)}
    photo = sorted(scene.queries_dir.glob("*.jpg"))[0]
    answer = api.locate(db, photo)
    assert answer.query == photo.name and answer.verified and answer.ranked_by.startswith("estimator best")
    nearest_place = min(abs(n.x - truth[photo.name][0]) + abs(n.y - truth[photo.name][1]) for n in answer.neighbours)
    assert abs(answer.x - truth[photo.name][0]) + abs(answer.y - truth[photo.name][1]) <= nearest_place + 3.0
