"""Image embedders: a whole photo -> one global descriptor, selected by name.

The retrieval signal that does not come from local features (see
``efficientnet_gem``). Each class documents its ``default_conf``; torch is imported only
when an embedder is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from glueloc.core.errors import DatabaseError
from glueloc.vision.registry import EMBEDDERS, instantiate


class Embedder(Protocol):
    name: str
    version: str
    dim: int
    conf: dict[str, Any]

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (dim,) float32, L2-normalised."""
        ...


def load_embedder(name: str, conf: Mapping[str, Any] | None = None) -> Embedder:
    return instantiate("embedder", EMBEDDERS, name, conf)


def load_recorded_embedder(name: str, version: str, conf: Mapping[str, Any]) -> Embedder:
    """The embedder a database recorded, refusing another version (its vectors would not compare)."""
    embedder = load_embedder(name, conf)
    if embedder.version != version:
        raise DatabaseError(f"database embeddings are {name} v{version}, this glueloc computes v{embedder.version}: "
                            "re-index into a new database")
    return embedder


__all__ = ["EMBEDDERS", "Embedder", "load_embedder", "load_recorded_embedder"]
