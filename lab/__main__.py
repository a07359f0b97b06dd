"""``python -m lab``: what ``bin/lab`` runs."""

from lab.cli import main

main()
