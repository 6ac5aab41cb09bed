"""``python -m glueloc`` runs the CLI."""

from glueloc.cli import run

run()
