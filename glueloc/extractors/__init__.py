"""Local-feature extractors, selected by name (see ``glueloc.registry``).

Each class documents its own ``default_conf``; ``base.Extractor`` holds the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glueloc.extractors.base import Extractor, Features
from glueloc.registry import EXTRACTORS, instantiate


def load_extractor(name: str, conf: Mapping[str, Any] | None = None) -> Extractor:
    """Instantiate the extractor called ``name`` with ``conf`` merged over its defaults."""
    return instantiate("extractor", EXTRACTORS, name, conf)


__all__ = ["EXTRACTORS", "Extractor", "Features", "load_extractor"]
