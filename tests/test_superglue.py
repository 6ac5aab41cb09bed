"""SuperGlue: official weight layout, weight files, optimal transport and equivariance.

The official weights cannot be obtained here, so correctness is shown by (a) the
state-dict layout equalling a table written down from the official model definition
(magicleap/SuperGluePretrainedNetwork, models/superglue.py), and (b) behavioural
tests: Sinkhorn marginals, permutation equivariance, the interleaved attention heads
against an explicit per-head reference, and strict weight loading (finding and
verifying weight files is tested in test_weights.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from glueloc.core.errors import GluelocError
from glueloc.vision.extractors.base import Features
from glueloc.vision.matchers.superglue import (
    MultiHeadedAttention,
    SuperGlue,
    SuperGlueNet,
    log_optimal_transport,
    normalize_keypoints,
)
from glueloc.vision.weights import BATCHNORM_COUNTERS, load_weights


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster, and far faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _conv1d(prefix: str, c_out: int, c_in: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c_out, c_in, 1), f"{prefix}.bias": (c_out,)}


def _batch_norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def _official_superglue_layout() -> dict[str, tuple[int, ...]]:
    """Written from the official SuperGlue class (descriptor_dim 256, encoder [32, 64, 128, 256],
    18 GNN layers of 4-head attention). MLP(channels) there is an nn.Sequential of
    Conv1d, BatchNorm1d, ReLU, ..., Conv1d, hence the module indices 0, 1, 3, 4, ..."""
    layout: dict[str, tuple[int, ...]] = {}
    layout |= _conv1d("kenc.encoder.0", 32, 3)
    layout |= _batch_norm("kenc.encoder.1", 32)
    layout |= _conv1d("kenc.encoder.3", 64, 32)
    layout |= _batch_norm("kenc.encoder.4", 64)
    layout |= _conv1d("kenc.encoder.6", 128, 64)
    layout |= _batch_norm("kenc.encoder.7", 128)
    layout |= _conv1d("kenc.encoder.9", 256, 128)
    layout |= _batch_norm("kenc.encoder.10", 256)
    layout |= _conv1d("kenc.encoder.12", 256, 256)
    for i in range(18):
        layer = f"gnn.layers.{i}"
        layout |= _conv1d(f"{layer}.attn.merge", 256, 256)
        layout |= _conv1d(f"{layer}.attn.proj.0", 256, 256)
        layout |= _conv1d(f"{layer}.attn.proj.1", 256, 256)
        layout |= _conv1d(f"{layer}.attn.proj.2", 256, 256)
        layout |= _conv1d(f"{layer}.mlp.0", 512, 512)
        layout |= _batch_norm(f"{layer}.mlp.1", 512)
        layout |= _conv1d(f"{layer}.mlp.3", 256, 512)
    layout |= _conv1d("final_proj", 256, 256)
    layout["bin_score"] = ()
    return layout


OFFICIAL_SUPERGLUE_LAYOUT = _official_superglue_layout()
# Keypoint encoder 110,336 + 18 layers x 658,176 + final_proj 65,792 + bin_score 1.
OFFICIAL_SUPERGLUE_PARAMETERS = 12_023_297


def _randomised_net(seed: int, dtype: torch.dtype = torch.float32, **conf: object) -> SuperGlueNet:
    """A SuperGlueNet with random parameters and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = SuperGlueNet(conf)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.1)
            elif name == "bin_score":
                tensor.fill_(0.3)
    return net.to(dtype).eval()


def _random_inputs(seed: int, m: int, n: int, dtype: torch.dtype = torch.float32) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    size0, size1 = (160.0, 120.0), (200.0, 100.0)

    def side(count: int, size: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keypoints = torch.rand(1, count, 2, generator=generator, dtype=dtype) * torch.tensor(size, dtype=dtype)
        scores = torch.rand(1, count, generator=generator, dtype=dtype)
        descriptors = torch.nn.functional.normalize(
            torch.randn(1, count, 256, generator=generator, dtype=dtype), dim=-1
        )
        return keypoints, scores, descriptors

    k0, s0, d0 = side(m, size0)
    k1, s1, d1 = side(n, size1)
    return {
        "keypoints0": k0, "scores0": s0, "descriptors0": d0, "image_size0": size0,
        "keypoints1": k1, "scores1": s1, "descriptors1": d1, "image_size1": size1,
    }  # fmt: skip


def test_state_dict_equals_official_layout() -> None:
    state = SuperGlueNet().state_dict()
    assert set(state) == set(OFFICIAL_SUPERGLUE_LAYOUT)
    assert {key: tuple(value.shape) for key, value in state.items()} == OFFICIAL_SUPERGLUE_LAYOUT
    assert len(OFFICIAL_SUPERGLUE_LAYOUT) == 339
    parameters = sum(
        int(np.prod(shape))
        for key, shape in OFFICIAL_SUPERGLUE_LAYOUT.items()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert parameters == OFFICIAL_SUPERGLUE_PARAMETERS
    assert sum(p.numel() for p in SuperGlueNet().parameters()) == OFFICIAL_SUPERGLUE_PARAMETERS


def test_default_conf_is_documented_values() -> None:
    assert SuperGlueNet.default_conf == {
        "descriptor_dim": 256,
        "weights": "indoor",
        "keypoint_encoder": [32, 64, 128, 256],
        "GNN_layers": ["self", "cross"] * 9,
        "sinkhorn_iterations": 100,
        "match_threshold": 0.2,
    }
    with pytest.raises(GluelocError, match="weights"):
        SuperGlueNet({"weights": "underwater"})
    with pytest.raises(GluelocError, match="unknown option"):
        SuperGlueNet({"treshold": 0.1})


def test_round_trip_through_loader(tmp_path: Path) -> None:
    source = _randomised_net(1)
    path = tmp_path / "superglue_random.pth"
    torch.save(source.state_dict(), path)
    target = SuperGlueNet().eval()
    load_weights(target, path)
    inputs = _random_inputs(0, 12, 9)
    with torch.inference_mode():
        a, b = source(**inputs), target(**inputs)
    assert torch.equal(a.log_assignment, b.log_assignment)
    assert torch.equal(a.matches0, b.matches0) and torch.equal(a.matching_scores0, b.matching_scores0)


def test_file_without_batchnorm_counters_loads(tmp_path: Path) -> None:
    # Files saved by PyTorch < 0.4.1 lack num_batches_tracked; PyTorch itself accepts that.
    state = {k: v for k, v in _randomised_net(2).state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    load_weights(SuperGlueNet(), path, BATCHNORM_COUNTERS)
    with pytest.raises(GluelocError, match=r"missing keys: kenc\.encoder\.1\.num_batches_tracked"):
        load_weights(SuperGlueNet(), path)  # tolerated only when the caller says so


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("gnn.layers.17.mlp.3.bias"), "gnn.layers.17.mlp.3.bias"),
        (lambda s: s.__setitem__("gnn.layers.18.attn.merge.bias", torch.zeros(256)), "gnn.layers.18.attn.merge.bias"),
        (lambda s: s.__setitem__("kenc.encoder.0.weight", torch.zeros(32, 2, 1)), "kenc.encoder.0.weight"),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_bad_state_dict_is_a_user_error_naming_the_key(
    tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], object], named: str
) -> None:
    state = SuperGlueNet().state_dict()
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(GluelocError, match=named.replace(".", r"\.")) as info:
        load_weights(SuperGlueNet(), path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("m", "n"), [(7, 5), (3, 11), (1, 1)])
def test_sinkhorn_marginals(m: int, n: int) -> None:
    torch.manual_seed(m * 100 + n)
    scores = torch.randn(2, m, n, dtype=torch.float64) * 3
    assignment = log_optimal_transport(scores, torch.tensor(0.5, dtype=torch.float64), 100).exp()
    assert assignment.shape == (2, m + 1, n + 1)
    rows, columns = assignment.sum(dim=2), assignment.sum(dim=1)
    # Paper marginals scaled by M + N: each real keypoint 1, each dustbin the other set's count.
    torch.testing.assert_close(rows[:, :m], torch.ones(2, m, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(rows[:, m], torch.full((2,), float(n), dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(columns[:, :n], torch.ones(2, n, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(columns[:, n], torch.full((2,), float(m), dtype=torch.float64), atol=1e-6, rtol=0)


def test_sinkhorn_prefers_strong_pairs() -> None:
    scores = torch.full((1, 3, 3), -10.0)
    scores[0, 0, 2] = scores[0, 1, 0] = 10.0
    assignment = log_optimal_transport(scores, torch.tensor(0.0), 100).exp()[0]
    assert assignment[0, 2] > 0.9 and assignment[1, 0] > 0.9
    assert assignment[2, 3] > 0.9  # keypoint 2 of image 0 goes to the dustbin


def test_permutation_equivariance() -> None:
    net = _randomised_net(3, torch.float64, match_threshold=0.0)
    inputs = _random_inputs(1, 10, 8, torch.float64)
    perm0 = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    perm1 = torch.randperm(8, generator=torch.Generator().manual_seed(6))
    permuted = dict(inputs)
    for key in ("keypoints0", "scores0", "descriptors0"):
        permuted[key] = inputs[key][:, perm0]
    for key in ("keypoints1", "scores1", "descriptors1"):
        permuted[key] = inputs[key][:, perm1]
    with torch.inference_mode():
        out, out_p = net(**inputs), net(**permuted)

    rows = torch.cat([perm0, torch.tensor([10])])
    columns = torch.cat([perm1, torch.tensor([8])])
    torch.testing.assert_close(out_p.log_assignment, out.log_assignment[:, rows][:, :, columns], atol=1e-9, rtol=0)

    assert (out.matches0 >= 0).any()
    inverse1 = torch.argsort(perm1)
    inverse0 = torch.argsort(perm0)
    expected0 = out.matches0[0, perm0]
    expected0 = torch.where(expected0 >= 0, inverse1[expected0.clamp(min=0)], expected0)
    assert torch.equal(out_p.matches0[0], expected0)
    expected1 = out.matches1[0, perm1]
    expected1 = torch.where(expected1 >= 0, inverse0[expected1.clamp(min=0)], expected1)
    assert torch.equal(out_p.matches1[0], expected1)
    torch.testing.assert_close(out_p.matching_scores0[0], out.matching_scores0[0, perm0])


def test_matches_are_mutual_and_thresholded() -> None:
    net = _randomised_net(4, match_threshold=0.0)
    with torch.inference_mode():
        out = net(**_random_inputs(2, 9, 12))
    matches0, matches1 = out.matches0[0], out.matches1[0]
    for i, j in enumerate(matches0.tolist()):
        if j >= 0:
            assert matches1[j] == i
            assert out.matching_scores0[0, i] == out.matching_scores1[0, j] > 0
    net.conf["match_threshold"] = 1.0
    with torch.inference_mode():
        assert (net(**_random_inputs(2, 9, 12)).matches0 == -1).all()


def test_no_keypoints_gives_no_matches() -> None:
    inputs = _random_inputs(3, 0, 5)
    out = SuperGlueNet().eval()(**inputs)
    assert out.matches0.shape == (1, 0) and (out.matches1 == -1).all()
    assert out.log_assignment.shape == (1, 1, 6)


def test_attention_heads_are_interleaved_as_official() -> None:
    torch.manual_seed(7)
    attention = MultiHeadedAttention(4, 16).double()
    x, source = torch.randn(2, 16, 5, dtype=torch.float64), torch.randn(2, 16, 6, dtype=torch.float64)
    q, k, v = (layer(t) for layer, t in zip(attention.proj, (x, source, source)))
    merged = torch.empty_like(q)
    for head in range(4):
        channels = slice(head, None, 4)  # channel c belongs to head c % 4
        weights = torch.softmax(torch.einsum("bdn,bdm->bnm", q[:, channels], k[:, channels]) / 2.0, dim=-1)
        merged[:, channels] = torch.einsum("bnm,bdm->bdn", weights, v[:, channels])
    torch.testing.assert_close(attention(x, source, source), attention.merge(merged))


def test_keypoint_normalisation() -> None:
    keypoints = torch.tensor([[[80.0, 60.0], [160.0, 120.0], [0.0, 0.0]]])
    normalised = normalize_keypoints(keypoints, (160, 120))
    expected = torch.tensor([[[0.0, 0.0], [80 / 112, 60 / 112], [-80 / 112, -60 / 112]]])
    torch.testing.assert_close(normalised, expected)


@pytest.mark.parametrize("variant", ["indoor", "outdoor"])
def test_missing_weight_file_names_file_and_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    monkeypatch.setenv("GLUELOC_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(GluelocError) as info:
        SuperGlue({"weights": variant})
    message = str(info.value)
    assert f"superglue_{variant}.pth" in message
    assert str(tmp_path / f"superglue_{variant}.pth") in message
    assert "magicleap/SuperGluePretrainedNetwork" in message and "models/weights" in message
    assert "non-commercial" in message and "GLUELOC_WEIGHTS_DIR" in message


def test_matcher_with_accepted_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUELOC_WEIGHTS_DIR", str(tmp_path))
    torch.save(_randomised_net(5).state_dict(), tmp_path / "superglue_indoor.pth")
    with pytest.raises(GluelocError, match="git blob id"):
        SuperGlue()
    matcher = SuperGlue({"verify_weights": False, "match_threshold": 0.0})
    assert matcher.name == "superglue" and matcher.extractors == ("superpoint",)
    inputs = _random_inputs(4, 6, 7)

    def features(side: str) -> Features:
        return Features(
            keypoints=inputs[f"keypoints{side}"][0].numpy(),
            scores=inputs[f"scores{side}"][0].numpy(),
            descriptors=inputs[f"descriptors{side}"][0].numpy(),
            image_size=tuple(int(v) for v in inputs[f"image_size{side}"]),
        )

    matches = matcher.match(features("0"), features("1"))
    assert len(matches) > 0 and matches.indices.shape == (len(matches), 2)
    assert len(set(matches.indices[:, 0])) == len(set(matches.indices[:, 1])) == len(matches)
    assert ((matches.scores >= 0) & (matches.scores <= 1)).all()
    empty = Features(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros((0, 256), np.float32), (10, 10))
    assert len(matcher.match(empty, features("1"))) == 0
