"""Re-extract lost local features from the original image files (``glueloc audit --repair``).

Local features are derivable too, as long as the photos they came from are still where
their index run found them and still have the sha256 recorded for them: extraction is
deterministic for a given extractor version and configuration, both of which the
database records (and so is the image embedding a shard holds beside them). A damaged shard (missing, truncated, edited, or missing an image's
group) is rebuilt whole into a new shard and swapped in by one SQLite transaction, the
same commit protocol as an index run, so a crash during repair changes nothing. A shard
with any image whose file is gone or changed is left as it is and reported: a partly
rebuilt shard would mix features of two origins.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from glueloc.core.errors import BadImageError
from glueloc.vision.embedders import Embedder, load_recorded_embedder
from glueloc.vision.extractors import load_recorded_extractor
from glueloc.vision.images import load_image
from glueloc.storage.audit import retired_groups, shard_findings
from glueloc.storage.database import Database
from glueloc.storage.features import ShardEntry, write_shard
from glueloc.storage.models import FeatureShard, Image, IndexRun

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardRepair:
    shard: str
    images: int
    rebuilt_as: str | None  # the new shard's file name, or None when not derivable
    reason: str  # the audit's codes for the shard, and why it could not be rebuilt if so


def rebuild_damaged_shards(db: Database, run_id: int) -> list[ShardRepair]:
    """Rebuild every damaged feature shard whose images are all still on disk, unchanged."""
    with db.session() as session:
        state = db.state(session)
        shards = list(session.scalars(select(FeatureShard).order_by(FeatureShard.id)))
        members: dict[int, list[Image]] = defaultdict(list)
        for image in session.scalars(select(Image).order_by(Image.id)):
            members[image.shard_id].append(image)
        folders = {run.id: run.images_dir for run in session.scalars(select(IndexRun))}
        retired = retired_groups(session)  # groups a remove run left in a shard are not damage
    if state is None:
        return []
    extractor = None
    embedder: Embedder | None = None
    results: list[ShardRepair] = []
    for shard in shards:
        rows = members.get(shard.id, [])
        findings = shard_findings(db.layout.features_dir, shard, rows, deep=True,
                                  retired=retired.get(shard.filename, ()), embedded=state.embedder is not None)
        if not findings or not rows:
            continue
        problem = ", ".join(sorted({finding.code for finding in findings}))
        entries: list[ShardEntry] = []
        missing: list[str] = []
        for row in rows:
            folder = folders.get(row.run_id)
            path = Path(folder) / row.name if folder else None
            try:
                if path is None:
                    raise BadImageError(row.name, "its index run recorded no image folder")
                image = load_image(path)
                if image.sha256 != row.sha256:
                    raise BadImageError(row.name, f"file at {path} changed since it was indexed")
            except BadImageError as exc:
                missing.append(str(exc))
                continue
            if extractor is None:  # the first image to re-extract: load the models, once
                extractor = load_recorded_extractor(state.extractor, state.extractor_version,
                                                    state.extractor_config)
                if state.embedder is not None:
                    embedder = load_recorded_embedder(state.embedder, state.embedder_version or "",
                                                      state.embedder_config or {})
            embedding = None if embedder is None else embedder.embed(image.rgb)
            entries.append(ShardEntry(row.name, extractor.extract(image.rgb), embedding))
        if missing:
            results.append(ShardRepair(shard.filename, len(rows), None,
                                       f"{problem}; not derivable: {len(missing)} image file(s) unusable, "
                                       f"e.g. {missing[0]}"))
            continue
        published = write_shard(db.layout.features_dir, entries)
        with db.session() as session, session.begin():
            new = FeatureShard(filename=published.filename, sha256=published.sha256, num_images=len(entries),
                               run_id=run_id)
            session.add(new)
            session.flush()
            counts = {entry.name: len(entry.features) for entry in entries}
            for image in session.scalars(select(Image).where(Image.shard_id == shard.id)):
                image.shard_id = new.id
                image.num_keypoints = counts[image.name]
            session.delete(session.get(FeatureShard, shard.id))
        (db.layout.features_dir / shard.filename).unlink(missing_ok=True)
        logger.info("shard %s (%s) rebuilt as %s from %d image files", shard.filename, problem,
                    published.filename, len(entries))
        results.append(ShardRepair(shard.filename, len(rows), published.filename, problem))
    return results
