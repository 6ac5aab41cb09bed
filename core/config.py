"""Strict configuration merging, shared by every model.

Following glue-factory's habit: a model's ``default_conf`` documents every option, and a
user option that is not in it is a typo, so it fails loudly instead of being ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glueloc.core.errors import GluelocError


def merge_conf(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """Return ``defaults`` updated with ``overrides``; unknown keys raise."""
    conf = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in conf:
            known = ", ".join(sorted(conf))
            raise GluelocError(f"{owner}: unknown option {key!r} (known: {known})")
        conf[key] = value
    return conf
