"""glueloc: fine-grained image localisation by feature matching.

The data path reads top-down through the packages: ``indexer`` (image -> features ->
stores), ``storage`` (SQLite, HDF5, FAISS and the rules that keep them consistent),
``query`` (features -> candidates -> verified matches -> position). This package holds
what they share: safe image decoding, the feature extractors and the CLI.
"""

__version__ = "0.1.0"
