"""``python -m headstart`` is the ``headstart`` command."""

from __future__ import annotations

from headstart.cli.main import main

main()
