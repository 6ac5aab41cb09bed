"""Image -> features -> stores.

* ``labels``        — read and validate the ``name,x,y`` CSV (untrusted input).
* ``vlad``          — NetVLAD-style aggregation: one retrieval vector per image.
* ``pipeline``      — the incremental, crash-safe index run.
* ``reindex``       — train the codebook and (re)build every global vector.
"""

if __name__ != "glueloc.indexer":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.indexer, not {__name__}: this folder installs under the glueloc package")
