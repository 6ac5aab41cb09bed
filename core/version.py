"""The release, recorded in every row glueloc writes (index runs, codebooks, calibrations).

It lives in the bottom layer so the stores can record it without importing the CLI's
package; ``pyproject.toml`` reads the same value.
"""

__version__ = "0.1.0"
