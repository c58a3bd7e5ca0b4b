"""The ``headstart`` app: the ``command`` decorator (the one place where bad input becomes a message and
exit code 2 instead of a traceback), and the options every command shares (--verbose, --quiet, --version).

Commands parse, call the Python API and print; they live in ``data_commands``, ``train_commands`` and
``model_commands``, registered by ``headstart.cli.main``.
"""

from __future__ import annotations

import functools
import logging
import sys

import typer
from rich.logging import RichHandler
from rich.markup import escape

from headstart._version import __version__
from headstart.cli.console import err, out
from headstart.errors import HeadstartError

app = typer.Typer(
    name="headstart",
    help="Transfer learning for image classification: inspect data, train, compare, report.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    ranks = sys.modules.get("headstart.training.distributed")  # not imported: no ranks were launched
    if ranks is None or ranks.is_main_process():  # with several ranks, they all stop; rank 0 says why
        err.print(f"[bold red]error:[/] {escape(message)}")  # a message's own brackets are not markup
    return typer.Exit(code)


def command(fn):
    """``app.command()``, and the one place where bad input becomes a message and an exit code
    (``HeadstartError.exit_code``: 2) instead of a traceback."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HeadstartError as e:
            raise _fail(str(e), e.exit_code) from None
        except ModuleNotFoundError as e:  # a lean install (docs/deploy.md, "Without PyTorch") asked to train
            if not (e.name or "").startswith("headstart"):
                raise _fail(
                    f"This needs {e.name}, which is not installed: a lean install (pip install --no-deps headstart "
                    "and its runtime extra) predicts and serves exported .onnx and .xml files only. Install "
                    "everything with pip install headstart."
                ) from None
            raise
        except KeyboardInterrupt:  # Ctrl-C outside training (which stops cleanly and says how to resume)
            raise _fail("Interrupted.", 130) from None

    return app.command()(run)


SHOW = {"progress": True}  # off with --quiet


def _version(value: bool) -> None:
    if value:
        out.print(f"headstart {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug messages."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress: neither bars (in a terminal) nor lines (off one)."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    # Library code logs; the CLI shows warnings (skipped images, ...) through rich on stderr.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
        force=True,
    )
    # Progress off a terminal (a line an epoch, a line each ~10 % of a long pass), plain, on stderr.
    lines = logging.StreamHandler(sys.stderr)
    lines.setFormatter(logging.Formatter("%(message)s"))
    progress = logging.getLogger("headstart.utils.progress")
    progress.handlers, progress.propagate = [lines], False
    progress.setLevel(logging.WARNING if quiet else logging.INFO)
    SHOW["progress"] = not quiet
