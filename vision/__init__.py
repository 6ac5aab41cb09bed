"""Images and the models that read them: glueloc's computer-vision layer.

* ``images``     — safe decoding of untrusted image files (pixel bombs, paths, EXIF).
* ``weights``    — the known weight files, their digests and checked ``weights_only`` loading.
* ``extractors`` — local features (SIFT, ALIKED, XFeat, SuperPoint), one model per file.
* ``matchers``   — matching two feature sets (nearest neighbour, LightGlue, SuperGlue).
* ``registry``   — name -> model class, imported on first use.
* ``pipelines``  — the named extractor + matcher pairs a database can be created with.
* ``vlad``       — VLAD aggregation of local descriptors into one retrieval vector.

Nothing here knows about databases or queries; ``storage``, ``indexer`` and ``query`` build on it.
"""

if __name__ != "glueloc.vision":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.vision, not {__name__}: this folder installs under the glueloc package")
