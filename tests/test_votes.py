"""Descriptor votes and the fused shortlist: which images share most local descriptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glueloc.core.errors import GluelocError
from glueloc.vision.images import load_image
from glueloc.synthetic import SyntheticDataset
from glueloc.query.localizer import Localizer, QueryOptions
from glueloc.query.retrieval import interleave
from glueloc.storage.vote_segments import add_descriptors
from glueloc.query.votes import DescriptorVotes, in_memory, ranked, votes_conf
from glueloc.storage.layout import Layout


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def library() -> tuple[DescriptorVotes, dict[int, np.ndarray]]:
    """Five 'images' of 40 random unit descriptors each, in a 16-cell inverted file."""
    rng = np.random.default_rng(0)
    images = {image_id: unit(rng.normal(size=(40, 32))) for image_id in (3, 5, 8, 13, 21)}
    part = in_memory(None, rng.normal(size=(16, 32)))
    add_descriptors(part, list(images.items()))
    return DescriptorVotes([part], {"neighbours": 2, "probes": 16}), images


def test_the_image_sharing_descriptors_gets_the_votes(library) -> None:
    votes, images = library
    rng = np.random.default_rng(1)
    # A query holding 30 of image 8's descriptors (slightly perturbed) and 10 of image 21's.
    query = unit(np.concatenate([images[8][:30], images[21][:10]]) + 0.01 * rng.normal(size=(40, 32)))
    counts = votes.count(query)
    assert ranked(counts)[:2] == [8, 21]
    assert counts[8] >= 30 and counts[21] >= 10
    # One vote per image per query descriptor, however many of its descriptors are near.
    assert all(n <= len(query) for n in counts.values())
    assert sum(counts.values()) <= len(query) * votes.conf["neighbours"]


def test_excluded_images_never_vote(library) -> None:
    votes, images = library
    counts = votes.count(images[8], exclude=[8, 3])
    assert 8 not in counts and 3 not in counts and counts  # the others still get votes


def test_featureless_images_and_queries(library) -> None:
    votes, images = library
    add_descriptors(votes.parts[0], [(34, np.zeros((0, 32), np.float32))])
    assert votes.descriptors == 200 and 34 not in votes.count(images[5])
    assert votes.count(np.zeros((0, 32), np.float32)) == {}
    with pytest.raises(ValueError, match="64 dimensions for a 32-d vote index"):
        add_descriptors(votes.parts[0], [(55, np.ones((3, 64), np.float32))])
    with pytest.raises(ValueError, match="64 dimensions for a 32-d vote index"):
        votes.count(np.ones((3, 64), np.float32))


def test_votes_split_over_parts_equal_one_part(library) -> None:
    """The best neighbours over several segments are the best over their union: how a query
    reads a database whose descriptors lie in many segments."""
    votes, images = library
    rng = np.random.default_rng(2)
    centroids = rng.normal(size=(16, 32))
    whole, first, second = in_memory(None, centroids), in_memory(None, centroids), in_memory(None, centroids)
    add_descriptors(whole, list(images.items()))
    add_descriptors(first, [(i, images[i]) for i in (3, 8)])
    add_descriptors(second, [(i, images[i]) for i in (5, 13, 21)])
    conf = {"neighbours": 3, "probes": 4}
    query = unit(np.concatenate([images[8][:20], images[13][:10]]) + 0.05 * rng.normal(size=(30, 32)))
    assert DescriptorVotes([first, second], conf).count(query) == DescriptorVotes([whole], conf).count(query)


def test_configuration_fails_loudly() -> None:
    assert votes_conf() == {"neighbours": 10, "probes": 8}
    with pytest.raises(ValueError, match="unknown descriptor-vote option"):
        votes_conf({"neighbors": 5})
    with pytest.raises(ValueError, match="neighbours >= 1"):
        votes_conf({"probes": 0})


def test_interleave_takes_turns_and_skips_repeats() -> None:
    assert interleave([[1, 2, 3, 4], [2, 5, 1, 6]], 5) == [1, 2, 5, 3, 4]
    assert interleave([[1, 2], []], 3) == [1, 2]
    assert interleave([[], [7, 8, 9]], 2) == [7, 8]
    assert interleave([[1, 2], [1, 2]], 10) == [1, 2]


def test_localizer_shortlists_by_each_retrieval(indexed: Path, scene: SyntheticDataset) -> None:
    query = sorted(scene.queries_dir.glob("*.jpg"))[0]
    shortlists = {}
    for retrieval in ("vlad", "votes", "fused"):
        with Localizer(Layout.at(indexed), QueryOptions(k=4, estimator="best", retrieval=retrieval)) as localizer:
            assert (localizer.votes is None) == (retrieval == "vlad")
            features = localizer.extractor.extract(load_image(query).rgb)
            shortlists[retrieval] = localizer.shortlist(features)
            location = localizer.locate(query)
            if localizer.votes is not None:
                # Every descriptor of the snapshot's images, from the persisted segments alone.
                assert localizer.votes.descriptors == sum(len(localizer.reader.descriptors(i.shard, i.name))
                                                          for i in localizer.images.values())
                assert all(image.vote_segment is not None for image in localizer.images.values())
                counts = localizer.votes.count(features.descriptors)
                # Every candidate carries its true similarity and its votes, whichever list it came from.
                vector = localizer.codebook.aggregate(features.descriptors)
                for c in shortlists[retrieval]:
                    assert c.votes == counts.get(c.image_id, 0)
                    assert c.similarity == pytest.approx(localizer.index.similarities([c.image_id], vector)[0], abs=1e-5)
        assert len(shortlists[retrieval]) == 4 and len(location.candidates) == 4
        assert [name for name, _, _ in location.candidates] == [localizer.images[c.image_id].name
                                                                  for c in shortlists[retrieval]]
    vlad = [c.image_id for c in shortlists["vlad"]]
    votes = [c.image_id for c in shortlists["votes"]]
    assert [c.image_id for c in shortlists["fused"]] == interleave([vlad, votes], 4)
    assert vlad == [c.image_id for c in sorted(shortlists["vlad"], key=lambda c: -c.similarity)]
    assert [c.votes for c in shortlists["votes"]] == sorted((c.votes for c in shortlists["votes"]), reverse=True)


def test_holding_a_place_out_removes_it_from_both_rankings(indexed: Path) -> None:
    with Localizer(Layout.at(indexed), QueryOptions(k=6, estimator="best")) as localizer:
        image = localizer.images[min(localizer.images)]
        features = localizer.reader.features(image.shard, image.name)
        assert any(c.image_id == image.id for c in localizer.shortlist(features))  # finds itself
        held_out = localizer.shortlist(features, exclude=(image.x, image.y))
    assert len(held_out) == 6
    assert all(localizer.positions[c.image_id] != (image.x, image.y) for c in held_out)


def test_unknown_retrieval_is_refused(indexed: Path) -> None:
    with pytest.raises(GluelocError, match="unknown retrieval 'nearest'"):
        Localizer(Layout.at(indexed), QueryOptions(retrieval="nearest"))


def test_the_cli_and_the_api_default_to_the_fused_shortlist() -> None:
    from glueloc.cli import DEFAULT_RETRIEVAL
    from glueloc.query.retrieval import FUSED

    assert DEFAULT_RETRIEVAL == FUSED == QueryOptions().retrieval


def test_the_cli_and_the_api_default_to_the_same_adaptive_depth() -> None:
    from glueloc.cli import DEEPEN_TO

    assert DEEPEN_TO == QueryOptions().deepen_to


def test_the_cli_help_states_the_api_early_stop() -> None:
    from glueloc.cli import STOP_ABOVE

    assert STOP_ABOVE == QueryOptions().stop_above
