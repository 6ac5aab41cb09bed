"""SuperPoint: official weight layout, weight loading, and the inference post-processing.

The official weights cannot be obtained here, so correctness is shown by (a) the
state-dict layout equalling a table written down from the official model definition
(magicleap/SuperGluePretrainedNetwork, models/superpoint.py), and (b) behavioural
tests of each post-processing step against independent, explicit references.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from glueloc.core.errors import GluelocError
from glueloc.vision.extractors.superpoint import (
    SuperPoint,
    SuperPointNet,
    cell_logits_to_scores,
    non_maximum_suppression,
    sample_descriptors,
    select_keypoints,
)
from glueloc.vision.weights import load_weights

# Written from the official SuperPoint class: c1..c5 = 64, 64, 128, 128, 256, all 3x3
# convolutions with bias, convPb 1x1 to 65 channels, convDb 1x1 to descriptor_dim 256.
OFFICIAL_SUPERPOINT_LAYOUT: dict[str, tuple[int, ...]] = {
    "conv1a.weight": (64, 1, 3, 3),
    "conv1a.bias": (64,),
    "conv1b.weight": (64, 64, 3, 3),
    "conv1b.bias": (64,),
    "conv2a.weight": (64, 64, 3, 3),
    "conv2a.bias": (64,),
    "conv2b.weight": (64, 64, 3, 3),
    "conv2b.bias": (64,),
    "conv3a.weight": (128, 64, 3, 3),
    "conv3a.bias": (128,),
    "conv3b.weight": (128, 128, 3, 3),
    "conv3b.bias": (128,),
    "conv4a.weight": (128, 128, 3, 3),
    "conv4a.bias": (128,),
    "conv4b.weight": (128, 128, 3, 3),
    "conv4b.bias": (128,),
    "convPa.weight": (256, 128, 3, 3),
    "convPa.bias": (256,),
    "convPb.weight": (65, 256, 1, 1),
    "convPb.bias": (65,),
    "convDa.weight": (256, 128, 3, 3),
    "convDa.bias": (256,),
    "convDb.weight": (256, 256, 1, 1),
    "convDb.bias": (256,),
}
# 640 + 36,928 * 3 + 73,856 + 147,584 * 3 + 295,168 * 2 + 16,705 + 65,792
OFFICIAL_SUPERPOINT_PARAMETERS = 1_300_865


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomised_net(seed: int, **conf: object) -> SuperPointNet:
    torch.manual_seed(seed)
    net = SuperPointNet(conf).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.1)
    return net


def _test_image(height: int = 64, width: int = 80) -> torch.Tensor:
    """A deterministic textured image (blobs and edges), (1, 1, H, W) in [0, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 0.5 + 0.25 * np.sin(x / 3.0) * np.cos(y / 5.0) + 0.25 * ((x // 16 + y // 16) % 2)
    return torch.from_numpy(np.clip(image, 0.0, 1.0))[None, None]


def test_state_dict_equals_official_layout() -> None:
    state = SuperPointNet().state_dict()
    assert list(state) == list(OFFICIAL_SUPERPOINT_LAYOUT)
    assert {key: tuple(value.shape) for key, value in state.items()} == OFFICIAL_SUPERPOINT_LAYOUT
    expected_parameters = sum(int(np.prod(shape)) for shape in OFFICIAL_SUPERPOINT_LAYOUT.values())
    assert expected_parameters == OFFICIAL_SUPERPOINT_PARAMETERS
    assert sum(p.numel() for p in SuperPointNet().parameters()) == OFFICIAL_SUPERPOINT_PARAMETERS


def test_default_conf_is_documented_values() -> None:
    assert SuperPointNet.default_conf == {
        "descriptor_dim": 256,
        "nms_radius": 4,
        "keypoint_threshold": 0.005,
        "max_keypoints": 1024,
        "remove_borders": 4,
    }
    with pytest.raises(GluelocError, match="unknown option"):
        SuperPointNet({"nms_radus": 3})
    with pytest.raises(GluelocError, match="max_keypoints"):
        SuperPointNet({"max_keypoints": 0})


def test_round_trip_through_loader(tmp_path: Path) -> None:
    source = _randomised_net(1)
    path = tmp_path / "superpoint_random.pth"
    torch.save(source.state_dict(), path)
    target = _randomised_net(2)
    load_weights(target, path)
    image = _test_image()
    with torch.inference_mode():
        a, b = source(image), target(image)
    assert len(a.keypoints[0]) > 0
    for x, y in zip(
        (a.keypoints[0], a.scores[0], a.descriptors[0]), (b.keypoints[0], b.scores[0], b.descriptors[0])
    ):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("convDb.bias"), "convDb.bias"),
        (lambda s: s.__setitem__("convDc.weight", torch.zeros(1)), "convDc.weight"),
        (lambda s: s.__setitem__("convPb.weight", torch.zeros(64, 256, 1, 1)), "convPb.weight"),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_bad_state_dict_is_a_user_error_naming_the_key(
    tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], object], named: str
) -> None:
    state = SuperPointNet().state_dict()
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(GluelocError, match=named.replace(".", r"\.")) as info:
        load_weights(SuperPointNet(), path)
    assert "\n" not in str(info.value)


def test_unreadable_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(GluelocError, match="not a readable PyTorch state dict"):
        load_weights(SuperPointNet(), path)


def test_forward_output_shapes_and_unit_descriptors() -> None:
    net = _randomised_net(3, max_keypoints=10)
    image = torch.cat([_test_image(), _test_image().flip(-1)])
    with torch.inference_mode():
        output = net(image)
    assert len(output.keypoints) == len(output.scores) == len(output.descriptors) == 2
    for keypoints, scores, descriptors in zip(output.keypoints, output.scores, output.descriptors):
        n = len(keypoints)
        assert n == 10  # more than 10 pass the threshold, so top-k applies
        assert keypoints.shape == (n, 2) and keypoints.dtype == torch.float32
        assert scores.shape == (n,)
        assert descriptors.shape == (n, 256)
        assert torch.allclose(descriptors.norm(dim=1), torch.ones(n), atol=1e-5)
        assert bool((scores > 0.005).all())
        assert torch.equal(scores, scores.sort(descending=True).values)  # top-k sorts
        # Border removal: 4 pixels from every edge of the 64 x 80 image.
        assert bool((keypoints >= 4).all())
        assert bool((keypoints[:, 0] < 80 - 4).all()) and bool((keypoints[:, 1] < 64 - 4).all())


def test_forward_rejects_wrong_input() -> None:
    with pytest.raises(ValueError):
        SuperPointNet()(torch.zeros(1, 3, 32, 32))


def test_cell_logits_unfold_to_pixels() -> None:
    h, w = 2, 3
    logits = torch.randn(1, 65, h, w)
    probabilities = torch.softmax(logits, dim=1)
    scores = cell_logits_to_scores(logits)
    assert scores.shape == (1, 8 * h, 8 * w)
    for i, j, r, c in itertools.product(range(h), range(w), range(8), range(8)):
        assert scores[0, 8 * i + r, 8 * j + c] == probabilities[0, r * 8 + c, i, j]


def test_nms_recovers_maxima_beaten_only_by_suppressed_pixels() -> None:
    torch.manual_seed(0)
    scores = torch.rand(1, 32, 40) * 1e-3
    scores[0, 10, 10] = 0.9  # A: a window maximum
    scores[0, 10, 14] = 0.8  # B: within radius 4 of A, suppressed
    scores[0, 10, 18] = 0.7  # C: beaten only by B, farther than 4 from A: kept
    kept = non_maximum_suppression(scores, radius=4)
    strong = {tuple(p) for p in torch.nonzero(kept[0] > 0.01).tolist()}
    assert strong == {(10, 10), (10, 18)}


def test_nms_keeps_separated_local_maxima_only() -> None:
    torch.manual_seed(1)
    radius = 2
    scores = torch.rand(1, 24, 24)
    kept = non_maximum_suppression(scores, radius)
    points = torch.nonzero(kept[0]).tolist()
    assert points
    for y, x in points:
        assert kept[0, y, x] == scores[0, y, x]  # kept values are unchanged
    for (y0, x0), (y1, x1) in itertools.combinations(points, 2):
        assert max(abs(y0 - y1), abs(x0 - x1)) > radius
    # Every strict maximum of its (2r+1)^2 window is kept.
    padded = torch.nn.functional.pad(scores, (radius,) * 4, value=-1.0)[0]
    for y, x in itertools.product(range(24), range(24)):
        window = padded[y : y + 2 * radius + 1, x : x + 2 * radius + 1]
        if scores[0, y, x] == window.max():
            assert kept[0, y, x] > 0


def test_select_keypoints_threshold_border_and_top_k() -> None:
    scores = torch.zeros(20, 30)
    points = {(0, 5): 0.9, (3, 10): 0.8, (4, 10): 0.3, (15, 25): 0.5, (15, 26): 0.6, (10, 10): 0.004}
    for (y, x), value in points.items():
        scores[y, x] = value
    xy, values = select_keypoints(scores, threshold=0.005, border=4, max_keypoints=-1)
    # (0, 5) and (3, 10) are within 4 rows of the top; (15, 26) within 4 columns of the right
    # edge (30 - 4 = 26); (10, 10) is under the threshold.
    assert sorted(map(tuple, xy.tolist())) == [(10.0, 4.0), (25.0, 15.0)]
    xy, values = select_keypoints(scores, threshold=0.005, border=0, max_keypoints=2)
    assert xy.tolist() == [[5.0, 0.0], [10.0, 3.0]]
    assert torch.allclose(values, torch.tensor([0.9, 0.8]))


def test_descriptor_sampling_follows_official_coordinate_mapping() -> None:
    h, w, cell = 3, 5, 8
    columns = torch.arange(w, dtype=torch.float32).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    dense = torch.stack([columns, rows, torch.full((h, w), 100.0)])  # (3, h, w)
    keypoints = torch.tensor([[3.5, 3.5], [w * cell - 1.0, h * cell - 1.0]])
    sampled = sample_descriptors(keypoints, dense, cell)
    norm = sampled[:, 2:3] / 100.0  # recover the un-normalised samples
    recovered = sampled[:, :2] / norm
    assert torch.allclose(recovered, torch.tensor([[0.0, 0.0], [w - 1.0, h - 1.0]]), atol=1e-4)
    assert torch.allclose(sampled.norm(dim=1), torch.ones(2))
    assert sample_descriptors(torch.zeros(0, 2), dense, cell).shape == (0, 3)


def test_extractor_requires_weights_and_runs_with_accepted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLUELOC_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(GluelocError) as info:
        SuperPoint()
    message = str(info.value)
    assert "superpoint_v1.pth" in message and "magicleap/SuperGluePretrainedNetwork" in message
    assert str(tmp_path) in message and "non-commercial" in message

    torch.save(_randomised_net(4).state_dict(), tmp_path / "superpoint_v1.pth")
    with pytest.raises(GluelocError, match="not the official superpoint_v1.pth"):
        SuperPoint()
    extractor = SuperPoint({"verify_weights": False, "max_keypoints": 30})
    assert extractor.name == "superpoint" and extractor.descriptor_dim == 256
    rgb = (np.repeat(_test_image(72, 96)[0, 0].numpy()[..., None], 3, axis=2) * 255).astype(np.uint8)
    features = extractor.extract(rgb)
    assert 0 < len(features) <= 30
    assert features.descriptors.shape == (len(features), 256)
    assert features.image_size == (96, 72)
