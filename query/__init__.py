"""Features -> candidates -> verified matches -> position.

* ``retrieval`` — the FAISS shortlist for a query's global vector.
* ``verify``    — matcher + RANSAC inlier counts for each candidate.
* ``position``  — the position estimate from verified neighbours.
* ``localizer`` — the query path joined up (the Python API behind ``glueloc query``).
* ``evaluate``  — error metrics over a labelled query set.
"""
