"""Errors that the CLI turns into one clear line and a non-zero exit.

Anything raised as a :class:`GluelocError` is the user's input or environment being
wrong (a bad CSV, a missing weight file, a database at an old schema); anything else is
a bug and keeps its traceback.
"""


class GluelocError(Exception):
    """A problem the user can fix; its message is printed as one line."""

    exit_code = 2


class BadImageError(GluelocError):
    """An image file that cannot be decoded safely (missing, corrupt, a pixel bomb)."""


class DatabaseError(GluelocError):
    """A database that is missing, locked, at another schema or inconsistent."""
