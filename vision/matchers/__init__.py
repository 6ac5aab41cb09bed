"""Matchers, selected by name (see ``glueloc.registry``); ``base.Matcher`` holds the contract."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glueloc.vision.matchers.base import Matcher, Matches
from glueloc.vision.registry import MATCHERS, instantiate


def load_matcher(name: str, conf: Mapping[str, Any] | None = None) -> Matcher:
    """Instantiate the matcher called ``name`` with ``conf`` merged over its defaults."""
    return instantiate("matcher", MATCHERS, name, conf)


__all__ = ["MATCHERS", "Matcher", "Matches", "load_matcher"]
