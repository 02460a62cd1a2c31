"""``python -m medvault.cli``: the same as the ``medvault`` command."""

from medvault.cli import main

main()
