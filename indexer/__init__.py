"""Image -> features -> stores.

* ``labels``        — read and validate the ``name,x,y`` CSV (untrusted input).
* ``vlad``          — NetVLAD-style aggregation: one retrieval vector per image.
* ``pipeline``      — the incremental, crash-safe index run.
* ``reindex``       — train the codebook and (re)build every global vector.
"""
