"""The bottom layer: what every other layer shares and nothing else.

* ``errors``  — the errors the CLI turns into one line and an exit status.
* ``config``  — strict merging of a model's ``default_conf`` with user options.
* ``labels``  — reading and validating the ``name,x,y`` CSV (untrusted input).
* ``threads`` — single-threaded sections for results that must not depend on the core count.
* ``version`` — the release recorded in every row glueloc writes.
"""

if __name__ != "glueloc.core":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.core, not {__name__}: this folder installs under the glueloc package")
