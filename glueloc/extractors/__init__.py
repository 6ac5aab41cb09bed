"""Local-feature extractors, selected by name.

``EXTRACTORS`` maps a name to its class; each class documents its own ``default_conf``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glueloc.errors import GluelocError
from glueloc.extractors.base import Extractor, Features
from glueloc.extractors.sift import SIFT

EXTRACTORS: dict[str, type[Extractor]] = {SIFT.name: SIFT}


def load_extractor(name: str, conf: Mapping[str, Any] | None = None) -> Extractor:
    """Instantiate the extractor called ``name`` with ``conf`` merged over its defaults."""
    try:
        cls = EXTRACTORS[name]
    except KeyError:
        raise GluelocError(f"unknown extractor {name!r} (available: {', '.join(sorted(EXTRACTORS))})") from None
    return cls(dict(conf or {}))


__all__ = ["EXTRACTORS", "Extractor", "Features", "SIFT", "load_extractor"]
