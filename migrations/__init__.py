"""Alembic migrations: the only code that creates or changes the schema."""

if __name__ != "glueloc.migrations":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.migrations, not {__name__}: this folder installs under the glueloc package")
