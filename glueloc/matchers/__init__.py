"""Matchers, selected by name. ``MATCHERS`` maps a name to its class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glueloc.errors import GluelocError
from glueloc.matchers.base import Matcher, Matches
from glueloc.matchers.nearest_neighbor import NearestNeighbor

MATCHERS: dict[str, type[Matcher]] = {NearestNeighbor.name: NearestNeighbor}


def load_matcher(name: str, conf: Mapping[str, Any] | None = None) -> Matcher:
    """Instantiate the matcher called ``name`` with ``conf`` merged over its defaults."""
    try:
        cls = MATCHERS[name]
    except KeyError:
        raise GluelocError(f"unknown matcher {name!r} (available: {', '.join(sorted(MATCHERS))})") from None
    return cls(dict(conf or {}))


__all__ = ["MATCHERS", "Matcher", "Matches", "NearestNeighbor", "load_matcher"]
