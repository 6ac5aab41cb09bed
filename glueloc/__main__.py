"""``python -m glueloc`` runs the CLI (through the same entry point as the ``glueloc`` command)."""

from glueloc.entry import main

main()
