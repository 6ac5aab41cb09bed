"""The image embedder: EfficientNet-Lite0 (ImageNet, frozen) + generalised-mean pooling.

GeM (Radenović et al., "Fine-tuning CNN image retrieval with no human annotation")
pools each of the 1280 head channels with a power mean, p = 3 — between average
pooling (p = 1, blurs a small distinctive object into the background) and max pooling
(p -> inf, one activation decides) — and is the standard way to turn a classification
backbone into a retrieval descriptor without training. The raw 1280-d descriptor is
what the index stores per image; what the database *learns* is the projection on top
of it (``glueloc.vision.projection``), so retraining never needs the pixels again.

On 2 CPU cores the network takes about 43 ms per image at 320 px (longer side).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from glueloc.core.config import merge_conf
from glueloc.vision import weights as weight_files

logger = logging.getLogger(__name__)


def network_input(rgb: np.ndarray, max_side: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB resized so that its longer side is ``max_side`` (at least 32 px a
    side): the image the network sees. Shared with bench/finetune_cache.py, whose cached
    activations must be those of exactly this input."""
    height, width = rgb.shape[:2]
    scale = float(max_side) / max(height, width)
    size = (max(32, round(width * scale)), max(32, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


class EfficientNetGeM:
    name: ClassVar[str] = "effnet-lite0-gem"
    version: ClassVar[str] = "1"  # bump when the output for the same image changes
    dim: ClassVar[int] = 1280
    default_conf: ClassVar[dict[str, Any]] = {
        "max_side": 320,  # longer image side fed to the network (it was trained at 224)
        "gem_p": 3.0,  # GeM exponent: 1 = average pooling, large = max pooling
        "device": "auto",  # "auto": CUDA when available, else CPU; or a torch device string
    }

    def __init__(self, conf: Mapping[str, Any] | None = None, *, weights: Path | None = None) -> None:
        import torch

        from glueloc.vision.embedders.efficientnet_lite import EfficientNetLite0

        self.conf = merge_conf(self.default_conf, conf, f"embedder {self.name!r}")
        self._device: torch.device = weight_files.resolve_device(str(self.conf["device"]))
        path = weight_files.find_weights("efficientnet-lite0", weights)
        network = EfficientNetLite0()
        weight_files.load_weights(network, path)
        self._network = network.eval().to(self._device)
        logger.info("EfficientNet-Lite0 loaded from %s on %s", path, self._device)

    @property
    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "config": self.conf}

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        resized = network_input(rgb, float(self.conf["max_side"]))
        image = torch.from_numpy(np.ascontiguousarray(resized)).to(self._device)
        image = image.permute(2, 0, 1)[None].float().div_(255.0)
        p = float(self.conf["gem_p"])
        with torch.inference_mode():
            activations = self._network.features(image)
            pooled = activations.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)[0]
        vector = pooled.float().cpu().numpy()
        return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
