"""The command line behaves like the tools people know: defaults in --help, --version, --layout."""

from __future__ import annotations

import re

import pytest
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


def test_serve_help_states_every_limit_and_timeout():
    text = _help("serve")
    for option, default in (("--port", "8000"), ("--max-upload-mb", "10.0"), ("--max-files", "16"),
                            ("--max-pixels", "89478485"), ("--max-request-pixels", "200000000"),
                            ("--max-decodes", "(the number of CPUs)"), ("--body-timeout", "30.0"),
                            ("--keep-alive-timeout", "5"), ("--limit-concurrency", "512")):
        assert re.search(rf"{option}\b.*?\[default: {re.escape(default)}\]", text), (option, default)
    assert "[1<=x<=65535]" in text and all(status in text for status in ("413", "408", "503"))


def test_serve_defaults_are_the_servers():
    from dataclasses import fields

    import typer.main

    from headstart.serve import Limits

    params = {p.name: p.default for p in typer.main.get_command(app).commands["serve"].params}
    for f in fields(Limits):  # max_decodes: None on the command line, the number of CPUs in Limits
        assert params[f.name] == (None if f.name == "max_decodes" else getattr(Limits(), f.name)), f.name


@pytest.mark.parametrize("option, value", [
    ("--port", "99999"), ("--port", "0"), ("--max-upload-mb", "-1"), ("--max-upload-mb", "0"),
    ("--max-upload-mb", "nan"), ("--max-files", "0"), ("--max-pixels", "0"), ("--max-request-pixels", "-1"),
    ("--max-decodes", "0"), ("--body-timeout", "0"), ("--keep-alive-timeout", "0"), ("--limit-concurrency", "0"),
])
def test_serve_refuses_a_bad_limit_with_a_message(option, value):
    result = runner.invoke(app, ["serve", "no-such-run", option, value], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    assert "Traceback" not in result.output


def test_serve_refuses_a_request_pixel_limit_below_the_image_one_before_loading_the_model():
    result = runner.invoke(app, ["serve", "no-such-run", "--max-request-pixels", "1000"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--max-request-pixels" in result.output and "no-such-run" not in result.output
