"""Local-feature extractors, selected by name (see ``glueloc.registry``).

Each class documents its own ``default_conf``; ``base.Extractor`` holds the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glueloc.core.errors import DatabaseError
from glueloc.vision.extractors.base import Extractor, Features
from glueloc.vision.registry import EXTRACTORS, instantiate


def load_extractor(name: str, conf: Mapping[str, Any] | None = None) -> Extractor:
    """Instantiate the extractor called ``name`` with ``conf`` merged over its defaults."""
    return instantiate("extractor", EXTRACTORS, name, conf)


def load_recorded_extractor(name: str, version: str, conf: Mapping[str, Any]) -> Extractor:
    """The extractor a database recorded, refusing a different version of it.

    Anything that extracts features to compare with or replace stored ones (a query,
    the repair's re-extraction) must produce what the database holds; another version
    of the same extractor would not.
    """
    extractor = load_extractor(name, conf)
    if extractor.version != version:
        raise DatabaseError(
            f"database features are {name} v{version}, this glueloc extracts v{extractor.version}: "
            "re-index into a new database"
        )
    return extractor


__all__ = ["EXTRACTORS", "Extractor", "Features", "load_extractor", "load_recorded_extractor"]
