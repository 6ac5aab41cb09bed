"""Errors that the CLI turns into one clear line and a non-zero exit.

Anything raised as a :class:`GluelocError` is the user's input or environment being
wrong (a bad CSV, a missing weight file, a database at an old schema); anything else is
a bug and keeps its traceback.
"""


class GluelocError(Exception):
    """A problem the user can fix; its message is printed as one line."""

    exit_code = 2


class BadImageError(GluelocError):
    """An image file that cannot be decoded safely (missing, corrupt, a pixel bomb).

    ``reason`` is the message without the file's name, so a caller that knows the image
    by another name (a CSV row naming a symlink or a file in a subfolder) can report it
    under that name.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.reason = reason

    def named(self, name: str) -> "BadImageError":
        return BadImageError(name, self.reason)


class DatabaseError(GluelocError):
    """A database that is missing, locked, at another schema or inconsistent."""


class StorageWriteError(GluelocError):
    """Writing a store failed (disk full, a file-size limit, an I/O error); what was committed is kept."""

    exit_code = 1
