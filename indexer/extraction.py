"""One image's way from decoded pixels to what a batch commits: features, raw embedding, file facts.

Shared by the local index run (indexer.pipeline) and the Ray workers (indexer.distributed),
so both produce the same records from the same pixels; the records hold no pixels, so a
worker can send them back to the committer cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from glueloc.core.labels import LabelRow
from glueloc.storage.features import ShardEntry
from glueloc.storage.layout import Published
from glueloc.vision.embedders import Embedder
from glueloc.vision.extractors import Extractor
from glueloc.vision.images import DecodedImage


@dataclass(frozen=True)
class ExtractedImage:
    """What the committer needs of one image: its CSV row, file facts and shard entry."""

    row: LabelRow
    sha256: str
    width: int
    height: int
    file_size: int
    file_mtime_ns: int
    entry: ShardEntry


@dataclass(frozen=True)
class ExtractedBatch:
    """One batch ready to commit: its images in CSV order, the rows rejected (with why),
    and its shard when a worker already published it (None: the committer writes it)."""

    images: list[ExtractedImage]
    rejections: list[tuple[LabelRow, str]]
    shard: Published | None = None


def extract_image(row: LabelRow, decoded: DecodedImage, extractor: Extractor,
                  embedder: Embedder | None) -> ExtractedImage:
    """Features and (with an embedder) the raw embedding of one decoded image.

    A featureless image (a blank wall) is still a labelled image: it is indexed with
    zero keypoints and a zero global vector, and simply never verifies.
    """
    features = extractor.extract(decoded.rgb)
    embedding = None if embedder is None else embedder.embed(decoded.rgb)
    return ExtractedImage(row, decoded.sha256, decoded.width, decoded.height, decoded.file_size,
                          decoded.file_mtime_ns, ShardEntry(row.name, features, embedding))
