"""The command line behaves like the tools people know: defaults in --help, --version, --layout."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from headstart import __version__
from headstart.cli import app

runner = CliRunner()


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_help_shows_every_default():
    train = _help("train")
    for option, default in (("--epochs", "recipe: 15 default, 10 seed"), ("--backbone", "efficientnet_lite0"),
                            ("--batch-size", "32"), ("--strategy", "features"), ("--devices", "auto"),
                            ("--logger", "none"), ("--layout", "detected")):
        assert re.search(rf"{option}\b.*?\[default: \(?{re.escape(default)}", train), (option, default)
    options = re.findall(r"--[a-z][a-z-]+", train)
    assert train.count("[default:") >= len(set(options)) - 6, train  # all but the flags, --help and arguments
    assert "[default: 60]" in _help("advise") and "[default: table]" in _help("predict")
    assert "Epochs. [default:" in train  # the help's own text is not eaten as markup


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"headstart {__version__}"


def test_every_command_that_takes_data_takes_a_layout():
    for command in ("inspect", "train", "compare", "advise"):
        assert "--layout" in _help(command), command


def test_choices_are_listed_and_checked_before_anything_runs(tmp_path):
    train = _help("train")
    assert "<features|partial|half|full|gradual|scratch|auto>" in train and "<food11|folders|csv>" in train
    result = runner.invoke(app, ["train", "demo", "--strategy", "fulll", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "'fulll' is not one of" in result.output
    assert not any(tmp_path.iterdir())
