"""Name -> class lookup for extractors, matchers and image embedders, imported only when used.

The learned models pull in torch and kornia (seconds of import time); a SIFT database
never needs them, so each entry names its module and is imported on first use.

Every model glueloc builds is built here, so this is where a Ctrl-C or SIGTERM is held
back while torch imports and weights load (core.interrupts): raised inside that native
code it can abort the process or be lost, raised after it the command stops cleanly.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, TypeVar

from glueloc.core.errors import GluelocError
from glueloc.core.interrupts import deferred_interrupts

T = TypeVar("T")

EXTRACTORS: Mapping[str, str] = {
    "sift": "glueloc.vision.extractors.sift:SIFT",
    "aliked": "glueloc.vision.extractors.aliked:ALIKED",
    "xfeat": "glueloc.vision.extractors.xfeat:XFeat",
    "superpoint": "glueloc.vision.extractors.superpoint:SuperPoint",
}

MATCHERS: Mapping[str, str] = {
    "nn": "glueloc.vision.matchers.nearest_neighbor:NearestNeighbor",
    "lightglue": "glueloc.vision.matchers.lightglue:LightGlue",
    "superglue": "glueloc.vision.matchers.superglue:SuperGlue",
}


EMBEDDERS: Mapping[str, str] = {
    "effnet-lite0-gem": "glueloc.vision.embedders.efficientnet_gem:EfficientNetGeM",
}


def resolve(kind: str, table: Mapping[str, str], name: str) -> type:
    try:
        module_name, _, class_name = table[name].partition(":")
    except KeyError:
        raise GluelocError(f"unknown {kind} {name!r} (available: {', '.join(sorted(table))})") from None
    return getattr(importlib.import_module(module_name), class_name)


def instantiate(kind: str, table: Mapping[str, str], name: str, conf: Mapping[str, Any] | None) -> Any:
    """The named model built with ``conf``: its module imported and its weights loaded with
    interrupts held, so that one arriving meanwhile stops the command right after."""
    with deferred_interrupts():
        return resolve(kind, table, name)(dict(conf or {}))
