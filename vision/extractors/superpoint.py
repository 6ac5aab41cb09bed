"""SuperPoint (DeTone, Malisiewicz & Rabinovich, CVPRW 2018), written for glueloc.

Why our own implementation: glueloc must run the published SuperPoint weights
(Magic Leap's ``superpoint_v1.pth``) without vendoring third-party code, so this
module rebuilds the network with *exactly* the official parameter names and shapes
(``conv1a`` ... ``conv4b``, detector head ``convPa``/``convPb``, descriptor head
``convDa``/``convDb``): a user-supplied official file loads with
``load_state_dict(strict=True)``. The post-processing (softmax over 65 classes, cell
unfolding, the two-round max-pool NMS, border removal, top-k, descriptor sampling)
follows the official inference code step by step, including its descriptor-sampling
coordinate mapping, so that the official weights give the official keypoints.

Architecture: a VGG-style encoder (eight 3x3 convolutions with ReLU, a 2x2 max-pool
after the 2nd, 4th and 6th) reduces a grayscale image by 8. The detector head predicts,
per 8x8 cell, 65 logits: one per pixel of the cell plus a "no keypoint" dustbin. The
descriptor head predicts a 256-d semi-dense map, sampled bilinearly at the keypoints.

:class:`SuperPoint` wraps the network as a glueloc :class:`Extractor`; it refuses to
run without the official (or an explicitly accepted) weight file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glueloc.core.config import merge_conf
from glueloc.core.errors import GluelocError
from glueloc.vision.extractors.base import Extractor
from glueloc.vision.weights import find_weights, load_weights, resolve_device

logger = logging.getLogger(__name__)

#: The official weight file this architecture is laid out for (its key in glueloc.weights.WEIGHTS).
WEIGHTS_KEY = "superpoint_v1"

#: Side of the square pixel cell that one coarse feature-map position covers.
CELL = 8


@dataclass(frozen=True)
class SuperPointOutput:
    """Per-image SuperPoint results of a batch (images may have different counts)."""

    keypoints: list[torch.Tensor]  # (N_i, 2) float, (x, y) pixel coordinates
    scores: list[torch.Tensor]  # (N_i,) detection probability
    descriptors: list[torch.Tensor]  # (N_i, D) unit L2 norm


def cell_logits_to_scores(logits: torch.Tensor) -> torch.Tensor:
    """Detector logits (B, 65, h, w) to a full-resolution probability map (B, 8h, 8w).

    Softmax over the 64 cell pixels and the dustbin, dustbin dropped; channel
    ``r * 8 + c`` is pixel (row r, column c) of its cell, which is ``pixel_shuffle``.
    """
    probabilities = F.softmax(logits, dim=1)[:, :-1]
    return F.pixel_shuffle(probabilities, CELL)[:, 0]


def _window_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)


def non_maximum_suppression(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Zero every score that is not kept by SuperPoint's max-pool NMS; (B, H, W) in and out.

    A pixel is kept when it is the maximum of its (2r+1)^2 window. Two further rounds
    recover maxima that were only beaten by pixels already suppressed: pixels farther
    than ``radius`` (Chebyshev) from every kept pixel are re-examined with the
    suppressed neighbourhoods zeroed. Kept pixels are therefore never within ``radius``
    of each other (barring exact ties).
    """
    if radius < 0:
        raise ValueError(f"NMS radius must be >= 0, got {radius}")
    zeros = torch.zeros_like(scores)
    kept = scores == _window_max(scores, radius)
    for _ in range(2):
        near_kept = _window_max(kept.to(scores.dtype), radius) > 0
        remaining = torch.where(near_kept, zeros, scores)
        kept = kept | ((remaining == _window_max(remaining, radius)) & ~near_kept)
    return torch.where(kept, scores, zeros)


def select_keypoints(
    scores: torch.Tensor, threshold: float, border: int, max_keypoints: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints of one NMS-ed score map (H, W): ((N, 2) float (x, y), (N,) scores).

    Keeps pixels scoring above ``threshold`` that are at least ``border`` pixels from
    every image edge, then the ``max_keypoints`` best (all when it is -1), sorted by
    decreasing score in that case and in row-major order otherwise.
    """
    height, width = scores.shape
    rows_cols = torch.nonzero(scores > threshold)
    values = scores[rows_cols[:, 0], rows_cols[:, 1]]
    inside = (
        (rows_cols[:, 0] >= border)
        & (rows_cols[:, 0] < height - border)
        & (rows_cols[:, 1] >= border)
        & (rows_cols[:, 1] < width - border)
    )
    rows_cols, values = rows_cols[inside], values[inside]
    if 0 <= max_keypoints < len(values):
        values, order = torch.topk(values, max_keypoints, dim=0)
        rows_cols = rows_cols[order]
    return rows_cols.flip(1).to(scores.dtype), values


def sample_descriptors(keypoints: torch.Tensor, dense: torch.Tensor, cell: int = CELL) -> torch.Tensor:
    """Bilinearly sample a coarse descriptor map (D, h, w) at (N, 2) pixel keypoints: (N, D).

    The official inference code's mapping from pixels to the coarse grid is kept as is:
    pixel x = cell/2 - 0.5 (centre of the first cell) goes to coarse column 0 and
    x = w*cell - 1 (the last pixel) to coarse column w - 1, linearly
    (``align_corners=True``); likewise for y. The true centre of the last cell would be
    w*cell - cell/2 - 0.5, so this stretches slightly, but it is what the published
    weights were evaluated with. Samples are L2-normalised.
    """
    dim, height, width = dense.shape
    if len(keypoints) == 0:
        return dense.new_zeros((0, dim))
    offset = cell / 2 - 0.5
    extent = keypoints.new_tensor([width * cell - cell / 2 - 0.5, height * cell - cell / 2 - 0.5])
    grid = (keypoints - offset) / extent * 2 - 1
    sampled = F.grid_sample(dense[None], grid.view(1, 1, -1, 2), mode="bilinear", align_corners=True)
    return F.normalize(sampled.reshape(dim, -1), p=2, dim=0).t()


class SuperPointNet(nn.Module):
    """The SuperPoint network; parameter names and shapes equal ``superpoint_v1.pth``."""

    default_conf: ClassVar[dict[str, Any]] = {
        "descriptor_dim": 256,  # output channels of convDb; the official weights have 256
        "nms_radius": 4,  # NMS window half-size in pixels (window is 2r+1 wide)
        "keypoint_threshold": 0.005,  # minimum detection probability
        "max_keypoints": 1024,  # keep the best k per image; -1 keeps all
        "remove_borders": 4,  # drop keypoints closer than this to an image edge (pixels)
    }

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.conf = merge_conf(self.default_conf, conf, "SuperPointNet")
        max_keypoints = int(self.conf["max_keypoints"])
        if max_keypoints == 0 or max_keypoints < -1:
            raise GluelocError(f"SuperPoint: max_keypoints must be positive or -1, got {max_keypoints}")
        if int(self.conf["nms_radius"]) < 0 or int(self.conf["remove_borders"]) < 0:
            raise GluelocError("SuperPoint: nms_radius and remove_borders must be >= 0")

        widths = (64, 64, 128, 128)
        head = 256
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv1a = nn.Conv2d(1, widths[0], kernel_size=3, padding=1)
        self.conv1b = nn.Conv2d(widths[0], widths[0], kernel_size=3, padding=1)
        self.conv2a = nn.Conv2d(widths[0], widths[1], kernel_size=3, padding=1)
        self.conv2b = nn.Conv2d(widths[1], widths[1], kernel_size=3, padding=1)
        self.conv3a = nn.Conv2d(widths[1], widths[2], kernel_size=3, padding=1)
        self.conv3b = nn.Conv2d(widths[2], widths[2], kernel_size=3, padding=1)
        self.conv4a = nn.Conv2d(widths[2], widths[3], kernel_size=3, padding=1)
        self.conv4b = nn.Conv2d(widths[3], widths[3], kernel_size=3, padding=1)
        # Detector head: 64 cell pixels + 1 dustbin.
        self.convPa = nn.Conv2d(widths[3], head, kernel_size=3, padding=1)
        self.convPb = nn.Conv2d(head, CELL * CELL + 1, kernel_size=1)
        # Descriptor head.
        self.convDa = nn.Conv2d(widths[3], head, kernel_size=3, padding=1)
        self.convDb = nn.Conv2d(head, int(self.conf["descriptor_dim"]), kernel_size=1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Shared encoder: (B, 1, H, W) in [0, 1] to (B, 128, H/8, W/8)."""
        x = image
        stages = (
            (self.conv1a, self.conv1b),
            (self.conv2a, self.conv2b),
            (self.conv3a, self.conv3b),
            (self.conv4a, self.conv4b),
        )
        for index, (first, second) in enumerate(stages):
            x = self.relu(second(self.relu(first(x))))
            if index < len(stages) - 1:
                x = self.pool(x)
        return x

    def dense_outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-resolution probability map (B, 8h, 8w) and unit-norm descriptor map (B, D, h, w)."""
        features = self.encode(image)
        scores = cell_logits_to_scores(self.convPb(self.relu(self.convPa(features))))
        descriptors = F.normalize(self.convDb(self.relu(self.convDa(features))), p=2, dim=1)
        return scores, descriptors

    def forward(self, image: torch.Tensor) -> SuperPointOutput:
        """Detect and describe keypoints in a batch of grayscale images (B, 1, H, W) in [0, 1].

        Keypoints lie in the top-left (8*floor(H/8), 8*floor(W/8)) part of the image.
        """
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(f"SuperPointNet expects a (B, 1, H, W) tensor, got {tuple(image.shape)}")
        if min(image.shape[-2:]) < CELL:
            raise ValueError(f"SuperPointNet needs images of at least {CELL}x{CELL} pixels")
        scores, dense_descriptors = self.dense_outputs(image)
        scores = non_maximum_suppression(scores, int(self.conf["nms_radius"]))
        keypoints: list[torch.Tensor] = []
        kept_scores: list[torch.Tensor] = []
        descriptors: list[torch.Tensor] = []
        for score_map, dense in zip(scores, dense_descriptors):
            points, values = select_keypoints(
                score_map,
                float(self.conf["keypoint_threshold"]),
                int(self.conf["remove_borders"]),
                int(self.conf["max_keypoints"]),
            )
            keypoints.append(points)
            kept_scores.append(values)
            descriptors.append(sample_descriptors(points, dense))
        return SuperPointOutput(keypoints=keypoints, scores=kept_scores, descriptors=descriptors)


class SuperPoint(Extractor):
    """SuperPoint as a glueloc extractor; needs ``superpoint_v1.pth`` (see :mod:`glueloc.weights`)."""

    name: ClassVar[str] = "superpoint"
    version: ClassVar[str] = "1"  # bump when the output for the same image changes
    descriptor_dim: ClassVar[int] = 256
    default_conf: ClassVar[dict[str, Any]] = {
        **Extractor.default_conf,
        "nms_radius": 4,  # NMS window half-size in pixels
        "keypoint_threshold": 0.005,  # minimum detection probability
        "remove_borders": 4,  # drop keypoints closer than this to an edge (pixels)
        "weights_path": None,  # explicit weight file; None: $GLUELOC_WEIGHTS_DIR or ~/.cache/glueloc/weights
        "verify_weights": True,  # require the official file's git blob id; False for fine-tuned weights
    }

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        super().__init__(conf)
        path = find_weights(WEIGHTS_KEY, self.conf["weights_path"], verify=bool(self.conf["verify_weights"]))
        net = SuperPointNet(
            {
                "nms_radius": self.conf["nms_radius"],
                "keypoint_threshold": self.conf["keypoint_threshold"],
                "max_keypoints": self.conf["max_keypoints"],
                "remove_borders": self.conf["remove_borders"],
            }
        )
        load_weights(net, path)  # strict: SuperPoint has no BatchNorm, nothing may be missing
        self.device = resolve_device("auto")
        self.net = net.eval().to(self.device)

    def _extract(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if min(rgb.shape[:2]) < CELL:
            logger.debug("image of %s pixels is too small for SuperPoint", rgb.shape[:2])
            return np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), np.zeros((0, 256), np.float32)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        image = torch.from_numpy(gray).to(self.device, torch.float32).div_(255.0)[None, None]
        with torch.inference_mode():
            output = self.net(image)
        return (
            output.keypoints[0].cpu().numpy(),
            output.scores[0].cpu().numpy(),
            output.descriptors[0].cpu().numpy(),
        )
