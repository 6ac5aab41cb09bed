"""The stores and the rules that keep them consistent.

* ``models``   — the SQLite schema (SQLAlchemy 2 ORM): the source of truth.
* ``database`` — opening a database, checking its Alembic revision, upgrading it.
* ``layout``   — where each store lives inside a database directory.
* ``features`` — immutable HDF5 feature shards (hloc's features-file layout).
* ``vectors``  — the FAISS index of global vectors, a derived cache saved atomically.
* ``lock``     — one writer at a time.
* ``audit``    — every invariant across the three stores, and the repair of what is derivable.
"""

if __name__ != "glueloc.storage":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.storage, not {__name__}: this folder installs under the glueloc package")
