"""Features -> candidates -> verified matches -> position.

* ``votes``     — which database images share most local descriptors with the query.
* ``retrieval`` — the shortlist: the global vector's FAISS ranking and the votes, in turns.
* ``verify``    — matcher + RANSAC inlier counts for each candidate.
* ``position``  — the position estimate from verified neighbours.
* ``localizer`` — the query path joined up (the Python API behind ``glueloc query``).
* ``evaluate``  — error metrics over a labelled query set.
"""

if __name__ != "glueloc.query":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.query, not {__name__}: this folder installs under the glueloc package")
