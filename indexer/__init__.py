"""Image -> features -> stores.

* ``labels``        — read and validate the ``name,x,y`` CSV (untrusted input).
* ``global_vector`` — one retrieval vector per image from its local features.
* ``pipeline``      — the incremental, crash-safe index run.
"""
