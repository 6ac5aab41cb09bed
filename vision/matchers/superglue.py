"""SuperGlue (Sarlin, DeTone, Malisiewicz & Rabinovich, CVPR 2020), written for glueloc.

Why our own implementation: glueloc must run the published SuperGlue weights
(``superglue_indoor.pth`` / ``superglue_outdoor.pth``) without vendoring third-party
code, so this module rebuilds the network with *exactly* the official parameter
names and shapes and loads a user-supplied official file with
``load_state_dict(strict=True)``:

* ``kenc.encoder``: the keypoint encoder, an MLP of 1x1 convolutions
  3 -> 32 -> 64 -> 128 -> 256 -> 256 with BatchNorm and ReLU between layers, fed with
  (x, y, detection score); its output is added to the descriptor.
* ``gnn.layers.{0..17}``: the attentional GNN, alternating self- and cross-attention.
  Each layer has multi-head attention (``attn.proj.{0,1,2}`` for query/key/value,
  ``attn.merge``) and an MLP ``mlp`` (512 -> 512 -> 256, BatchNorm) applied to
  [state, message]; its output is a residual update.
* ``final_proj``: a linear projection before the dot-product scores.
* ``bin_score``: the learnable dustbin score of the optimal-transport layer.

Two layout details matter for the official weights and are reproduced on purpose:
the attention splits the 256 channels into 4 heads *interleaved* (channel ``c`` is
dimension ``c // 4`` of head ``c % 4``), and keypoints are normalised by the image
size as ``(p - size / 2) / (0.7 * max(size))``.

The assignment is computed by log-space Sinkhorn iterations on the score matrix
augmented with a dustbin row and column; matches are mutual best entries whose
probability exceeds ``match_threshold``.

:class:`SuperGlue` wraps the network as a glueloc :class:`Matcher` for SuperPoint
features; it refuses to run without an official (or explicitly accepted) weight file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glueloc.core.config import merge_conf
from glueloc.core.errors import GluelocError
from glueloc.vision.extractors.base import Features
from glueloc.vision.matchers.base import Matcher, Matches
from glueloc.vision.weights import BATCHNORM_COUNTERS, find_weights, load_weights, resolve_device

logger = logging.getLogger(__name__)

#: Weight variants the official release provides.
WEIGHT_VARIANTS: tuple[str, ...] = ("indoor", "outdoor")


def weights_key(variant: str) -> str:
    """Key in glueloc.weights.WEIGHTS of a weight variant, e.g. ``superglue_indoor``."""
    if variant not in WEIGHT_VARIANTS:
        raise GluelocError(f"SuperGlue: weights must be one of {', '.join(WEIGHT_VARIANTS)}, got {variant!r}")
    return f"superglue_{variant}"


@dataclass(frozen=True)
class SuperGlueOutput:
    """SuperGlue results for a batch of image pairs with M and N keypoints."""

    matches0: torch.Tensor  # (B, M) int64: index in image 1, or -1
    matches1: torch.Tensor  # (B, N) int64: index in image 0, or -1
    matching_scores0: torch.Tensor  # (B, M) assignment probability of the mutual best match, else 0
    matching_scores1: torch.Tensor  # (B, N)
    log_assignment: torch.Tensor  # (B, M + 1, N + 1) log probabilities incl. dustbins, scaled by M + N


def pointwise_mlp(channels: Sequence[int], batch_norm: bool = True) -> nn.Sequential:
    """1x1-convolution MLP; BatchNorm (optional) and ReLU between layers, none after the last.

    Module indices follow the official layout (conv, BN, ReLU, conv, ...), which is
    what the state-dict keys ``...encoder.0``, ``...encoder.1``, ``...encoder.3`` name.
    """
    layers: list[nn.Module] = []
    for index, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv1d(c_in, c_out, kernel_size=1, bias=True))
        if index < len(channels) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(c_out))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def normalize_keypoints(keypoints: torch.Tensor, image_size: tuple[float, float]) -> torch.Tensor:
    """Centre (B, N, 2) pixel keypoints on the image and scale by 0.7 * its longer side."""
    width, height = float(image_size[0]), float(image_size[1])
    centre = keypoints.new_tensor([width / 2, height / 2])
    return (keypoints - centre) / (0.7 * max(width, height))


class KeypointEncoder(nn.Module):
    """Encodes (x, y, score) of each keypoint into the descriptor space."""

    def __init__(self, feature_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.encoder = pointwise_mlp([3, *hidden, feature_dim])
        nn.init.zeros_(self.encoder[-1].bias)

    def forward(self, keypoints: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) normalised keypoints and (B, N) scores to (B, D, N)."""
        inputs = torch.cat([keypoints.transpose(1, 2), scores[:, None, :]], dim=1)
        return self.encoder(inputs)


class MultiHeadedAttention(nn.Module):
    """Multi-head scaled dot-product attention over (B, D, N) feature sets.

    ``proj`` holds the query, key and value projections, ``merge`` the output one. The
    heads are interleaved across channels (channel ``c`` -> head ``c % heads``), which
    the official weights depend on.
    """

    def __init__(self, num_heads: int, feature_dim: int) -> None:
        super().__init__()
        if feature_dim % num_heads:
            raise ValueError(f"feature_dim {feature_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = feature_dim // num_heads
        self.merge = nn.Conv1d(feature_dim, feature_dim, kernel_size=1)
        self.proj = nn.ModuleList([nn.Conv1d(feature_dim, feature_dim, kernel_size=1) for _ in range(3)])

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (B, head_dim * heads, N) with interleaved heads -> (B, heads, N, head_dim)
        batch, _, length = x.shape
        return x.view(batch, self.head_dim, self.num_heads, length).permute(0, 2, 3, 1)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split(layer(x)) for layer, x in zip(self.proj, (query, key, value)))
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        batch, _, length, _ = attended.shape
        merged = attended.permute(0, 3, 1, 2).reshape(batch, self.head_dim * self.num_heads, length)
        return self.merge(merged)


class AttentionalPropagation(nn.Module):
    """One GNN layer: attend from ``x`` to ``source``, then an MLP on [x, message]."""

    def __init__(self, feature_dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadedAttention(num_heads, feature_dim)
        self.mlp = pointwise_mlp([2 * feature_dim, 2 * feature_dim, feature_dim])
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        message = self.attn(x, source, source)
        return self.mlp(torch.cat([x, message], dim=1))


class AttentionalGNN(nn.Module):
    """Alternating self/cross attention layers with residual updates of both images."""

    def __init__(self, feature_dim: int, layer_kinds: Sequence[str], num_heads: int = 4) -> None:
        super().__init__()
        unknown = sorted({kind for kind in layer_kinds if kind not in ("self", "cross")})
        if unknown:
            raise GluelocError(f"SuperGlue: GNN layers must be 'self' or 'cross', got {unknown}")
        self.kinds: tuple[str, ...] = tuple(layer_kinds)
        self.layers = nn.ModuleList([AttentionalPropagation(feature_dim, num_heads) for _ in self.kinds])

    def forward(self, desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer, kind in zip(self.layers, self.kinds):
            source0, source1 = (desc1, desc0) if kind == "cross" else (desc0, desc1)
            # Both updates read the states from before this layer.
            desc0, desc1 = desc0 + layer(desc0, source0), desc1 + layer(desc1, source1)
        return desc0, desc1


def log_optimal_transport(scores: torch.Tensor, dustbin: torch.Tensor, iterations: int) -> torch.Tensor:
    """Entropic optimal transport with dustbins, in log space: (B, M, N) -> (B, M + 1, N + 1).

    The score matrix is extended by a dustbin row and column filled with ``dustbin``.
    The target marginals are those of the paper after dividing by M + N: every real
    keypoint carries mass 1, the dustbin of image 0 carries N and that of image 1
    carries M (so everything can be unmatched). Sinkhorn alternates row then column
    normalisation ``iterations`` times, starting from zero potentials; the result is
    returned multiplied by M + N, so exp of a real keypoint's row (or column) sums to 1.
    """
    batch, m, n = scores.shape
    bin_column = dustbin.expand(batch, m, 1)
    bin_row = dustbin.expand(batch, 1, n)
    corner = dustbin.expand(batch, 1, 1)
    couplings = torch.cat([torch.cat([scores, bin_column], 2), torch.cat([bin_row, corner], 2)], 1)

    log_total = math.log(m + n)
    log_mu = scores.new_full((m + 1,), -log_total)
    log_nu = scores.new_full((n + 1,), -log_total)
    log_mu[-1] = math.log(n) - log_total if n else -math.inf
    log_nu[-1] = math.log(m) - log_total if m else -math.inf

    u = scores.new_zeros((batch, m + 1))
    v = scores.new_zeros((batch, n + 1))
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
    return couplings + u[:, :, None] + v[:, None, :] + log_total


def mutual_matches(
    log_assignment: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual best real entries of a (B, M + 1, N + 1) log assignment above ``threshold``.

    Returns matches0 (B, M), matches1 (B, N) with -1 for unmatched, and the match
    probabilities (B, M), (B, N) of mutual best pairs (0 elsewhere, even under the
    threshold, as in the official output).
    """
    real = log_assignment[:, :-1, :-1]
    best0, best1 = real.max(dim=2), real.max(dim=1)
    index0, index1 = best0.indices, best1.indices
    m, n = real.shape[1:]
    mutual0 = index1.gather(1, index0) == torch.arange(m, device=real.device)
    mutual1 = index0.gather(1, index1) == torch.arange(n, device=real.device)
    zero = real.new_zeros(())
    scores0 = torch.where(mutual0, best0.values.exp(), zero)
    scores1 = torch.where(mutual1, scores0.gather(1, index1), zero)
    valid0 = mutual0 & (scores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, index1)
    unmatched = index0.new_full((), -1)
    return torch.where(valid0, index0, unmatched), torch.where(valid1, index1, unmatched), scores0, scores1


class SuperGlueNet(nn.Module):
    """The SuperGlue network; parameter names and shapes equal the official weight files."""

    default_conf: ClassVar[dict[str, Any]] = {
        "descriptor_dim": 256,  # SuperPoint descriptor size; the official weights have 256
        "weights": "indoor",  # which official file fits: "indoor" (ScanNet) or "outdoor" (MegaDepth)
        "keypoint_encoder": [32, 64, 128, 256],  # hidden widths of the keypoint MLP
        "GNN_layers": ["self", "cross"] * 9,  # 18 attention layers, alternating
        "sinkhorn_iterations": 100,  # optimal-transport iterations
        "match_threshold": 0.2,  # minimum assignment probability of a match
    }

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(self.default_conf, conf, "SuperGlueNet")
        weights_key(self.conf["weights"])  # validates the variant name
        dim = int(self.conf["descriptor_dim"])
        self.kenc = KeypointEncoder(dim, [int(c) for c in self.conf["keypoint_encoder"]])
        self.gnn = AttentionalGNN(dim, [str(kind) for kind in self.conf["GNN_layers"]])
        self.final_proj = nn.Conv1d(dim, dim, kernel_size=1, bias=True)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    def forward(
        self,
        keypoints0: torch.Tensor,
        scores0: torch.Tensor,
        descriptors0: torch.Tensor,
        image_size0: tuple[float, float],
        keypoints1: torch.Tensor,
        scores1: torch.Tensor,
        descriptors1: torch.Tensor,
        image_size1: tuple[float, float],
    ) -> SuperGlueOutput:
        """Match a batch of pairs.

        keypoints (B, N, 2) pixel (x, y); scores (B, N) detection scores; descriptors
        (B, N, D) (note: keypoint-major, the transpose of the official (B, D, N));
        image_size (width, height) of the image the keypoints are expressed in.
        """
        batch, m = keypoints0.shape[:2]
        n = keypoints1.shape[1]
        if m == 0 or n == 0:
            return self._no_keypoints(keypoints0, batch, m, n)

        desc0 = descriptors0.transpose(1, 2) + self.kenc(normalize_keypoints(keypoints0, image_size0), scores0)
        desc1 = descriptors1.transpose(1, 2) + self.kenc(normalize_keypoints(keypoints1, image_size1), scores1)
        desc0, desc1 = self.gnn(desc0, desc1)
        projected0, projected1 = self.final_proj(desc0), self.final_proj(desc1)
        similarity = torch.einsum("bdm,bdn->bmn", projected0, projected1) / math.sqrt(projected0.shape[1])
        log_assignment = log_optimal_transport(similarity, self.bin_score, int(self.conf["sinkhorn_iterations"]))
        matches0, matches1, mscores0, mscores1 = mutual_matches(log_assignment, float(self.conf["match_threshold"]))
        return SuperGlueOutput(matches0, matches1, mscores0, mscores1, log_assignment)

    @staticmethod
    def _no_keypoints(like: torch.Tensor, batch: int, m: int, n: int) -> SuperGlueOutput:
        # Everything goes to the dustbins: probability 1 for real-to-dustbin entries.
        log_assignment = like.new_full((batch, m + 1, n + 1), -math.inf)
        log_assignment[:, :m, n] = 0.0
        log_assignment[:, m, :n] = 0.0
        return SuperGlueOutput(
            matches0=torch.full((batch, m), -1, dtype=torch.int64, device=like.device),
            matches1=torch.full((batch, n), -1, dtype=torch.int64, device=like.device),
            matching_scores0=like.new_zeros((batch, m)),
            matching_scores1=like.new_zeros((batch, n)),
            log_assignment=log_assignment,
        )


class SuperGlue(Matcher):
    """SuperGlue as a glueloc matcher for SuperPoint features; needs an official weight file."""

    name: ClassVar[str] = "superglue"
    version: ClassVar[str] = "1"
    extractors: ClassVar[tuple[str, ...]] = ("superpoint",)
    default_conf: ClassVar[dict[str, Any]] = {
        "weights": "indoor",  # "indoor" (superglue_indoor.pth) or "outdoor" (superglue_outdoor.pth)
        "sinkhorn_iterations": 100,  # optimal-transport iterations
        "match_threshold": 0.2,  # minimum assignment probability of a match
        "weights_path": None,  # explicit weight file; None: $GLUELOC_WEIGHTS_DIR or ~/.cache/glueloc/weights
        "verify_weights": True,  # require the official file's git blob id; False for fine-tuned weights
    }

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__(conf)
        key = weights_key(self.conf["weights"])
        path = find_weights(key, self.conf["weights_path"], verify=bool(self.conf["verify_weights"]))
        net = SuperGlueNet(
            {
                "weights": self.conf["weights"],
                "sinkhorn_iterations": self.conf["sinkhorn_iterations"],
                "match_threshold": self.conf["match_threshold"],
            }
        )
        # Files saved by PyTorch < 0.4.1 lack the BatchNorm counters; nothing else may be missing.
        load_weights(net, path, BATCHNORM_COUNTERS)
        self.device = resolve_device("auto")
        self.net = net.eval().to(self.device)

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def _tensors(self, features: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dim = int(self.net.conf["descriptor_dim"])
        if features.descriptors.shape[1] != dim:
            raise GluelocError(
                f"SuperGlue needs {dim}-d SuperPoint descriptors, got {features.descriptors.shape[1]}-d ones"
            )
        keypoints = torch.from_numpy(np.ascontiguousarray(features.keypoints, np.float32))[None]
        scores = torch.from_numpy(np.ascontiguousarray(features.scores, np.float32))[None]
        descriptors = torch.from_numpy(np.ascontiguousarray(features.descriptors, np.float32))[None]
        return keypoints.to(self.device), scores.to(self.device), descriptors.to(self.device)

    def match(self, features0: Features, features1: Features) -> Matches:
        if len(features0) == 0 or len(features1) == 0:
            return Matches.empty()
        k0, s0, d0 = self._tensors(features0)
        k1, s1, d1 = self._tensors(features1)
        with torch.inference_mode():
            output = self.net(k0, s0, d0, features0.image_size, k1, s1, d1, features1.image_size)
        matches0 = output.matches0[0].cpu().numpy()
        confidence = output.matching_scores0[0].cpu().numpy()
        index0 = np.flatnonzero(matches0 >= 0)
        indices = np.stack([index0, matches0[index0]], axis=1).astype(np.int64)
        return Matches(indices, confidence[index0].astype(np.float32))
