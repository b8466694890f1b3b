"""``python -m querywatch``: the ``querywatch`` command."""

from .cli import main

main()
