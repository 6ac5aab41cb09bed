"""glueloc: fine-grained image localisation by feature matching.

The package is assembled from the repository's folders (``pyproject.toml``'s
``package-dir``), one layer each, every layer importing only those below it
(docs/ARCHITECTURE.md):

* ``glueloc``            — the CLI (``cli``, ``entry``), the Python API (``api``) and pictures (``viz``)
* ``glueloc.synthetic``  — the synthetic room for the demo and the tests
* ``glueloc.query``      — features -> candidates -> verified matches -> position
* ``glueloc.indexer``    — image -> features -> stores
* ``glueloc.storage``    — SQLite, HDF5 and FAISS and the rules that keep them consistent
* ``glueloc.migrations`` — the schema's history (Alembic)
* ``glueloc.vision``     — images, extractors, matchers, weights
* ``glueloc.core``       — errors, configuration, labels

Importing ``glueloc`` itself stays cheap (the console entry point relies on it).
"""

from glueloc.core.version import __version__

__all__ = ["__version__"]
