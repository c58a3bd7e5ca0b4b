"""The ``headstart`` command: the app with every command registered.

Exit codes: 0 success, 2 bad input (unknown option, unusable data: the message says why), 1 when
``predict`` could not read some images or an export fails its parity check, 130 after Ctrl-C.
"""

from __future__ import annotations

import sys

from headstart.cli import data_commands, model_commands, train_commands  # noqa: F401  (each registers its commands)
from headstart.cli.app import app


def main() -> None:
    app(prog_name="headstart")  # the same name under python -m headstart (usage lines, completion)


if __name__ == "__main__":
    sys.exit(main())
