"""The command line behaves like the tools people know: defaults in --help, --version, --layout."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from headstart import __version__
from headstart.cli.main import app

runner = CliRunner()


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_help_shows_every_default():
    train = _help("train")
    for option, default in (
        ("--epochs", "recipe: 15 default, 10 seed"),
        ("--backbone", "efficientnet_lite0"),
        ("--batch-size", "32"),
        ("--strategy", "features"),
        ("--devices", "auto"),
        ("--logger", "none"),
        ("--layout", "detected"),
    ):
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
    for option, default in (
        ("--port", "8000"),
        ("--max-upload-mb", "10.0"),
        ("--max-files", "16"),
        ("--max-pixels", "89478485"),
        ("--max-request-pixels", "200000000"),
        ("--max-decodes", "(the number of CPUs)"),
        ("--body-timeout", "30.0"),
        ("--keep-alive-timeout", "5"),
        ("--limit-concurrency", "512"),
    ):
        assert re.search(rf"{option}\b.*?\[default: {re.escape(default)}\]", text), (option, default)
    assert "[1<=x<=65535]" in text and all(status in text for status in ("413", "408", "503"))


def test_serve_defaults_are_the_servers():
    from dataclasses import fields

    import typer.main

    from headstart.inference.serve import Limits

    params = {p.name: p.default for p in typer.main.get_command(app).commands["serve"].params}
    for f in fields(Limits):  # max_decodes: None on the command line, the number of CPUs in Limits
        assert params[f.name] == (None if f.name == "max_decodes" else getattr(Limits(), f.name)), f.name


@pytest.mark.parametrize(
    "option, value",
    [
        ("--port", "99999"),
        ("--port", "0"),
        ("--max-upload-mb", "-1"),
        ("--max-upload-mb", "0"),
        ("--max-upload-mb", "nan"),
        ("--max-files", "0"),
        ("--max-pixels", "0"),
        ("--max-request-pixels", "-1"),
        ("--max-decodes", "0"),
        ("--body-timeout", "0"),
        ("--keep-alive-timeout", "0"),
        ("--limit-concurrency", "0"),
    ],
)
def test_serve_refuses_a_bad_limit_with_a_message(option, value):
    result = runner.invoke(app, ["serve", "no-such-run", option, value], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    assert "Traceback" not in result.output


def test_serve_refuses_a_request_pixel_limit_below_the_image_one_before_loading_the_model():
    result = runner.invoke(app, ["serve", "no-such-run", "--max-request-pixels", "1000"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "--max-request-pixels" in result.output and "no-such-run" not in result.output


# Bad numbers and options their strategy would ignore: exit 2 with the option and the value
# received, before any image is decoded or any file written (--input-size 100000 once made a
# 360 GB cache file). (command line, what the message names)
BAD_OPTIONS = [
    (
        ["train", "demo", "--input-size", "100000"],
        ["input_size", "between 16 and 1024", "100000", "--force-input-size"],
    ),
    (["train", "demo", "--input-size", "1"], ["input_size", "between 16 and 1024", "input_size=1."]),
    (["train", "demo", "--input-size", "0"], ["input_size", "input_size=0", "Leave it out"]),
    (
        ["train", "demo", "--input-size", "-5", "--force-input-size"],
        ["input_size", "between 1 and 4096", "input_size=-5"],
    ),
    (["train", "demo", "--early-stopping", "-1"], ["early_stopping", "at least 0", "early_stopping=-1"]),
    (["train", "demo", "--epochs", "0"], ["epochs", "at least 1", "epochs=0"]),
    (["train", "demo", "--batch-size", "0"], ["batch_size", "at least 1", "batch_size=0"]),
    (["train", "demo", "--lr", "0"], ["lr must be greater than 0", "lr=0.0"]),
    (["train", "demo", "--lr", "inf"], ["lr must be greater than 0", "lr=inf"]),
    (["train", "demo", "--backbone-lr", "-0.001"], ["backbone_lr must be greater than 0", "backbone_lr=-0.001"]),
    (["train", "demo", "--num-workers", "-1"], ["num_workers", "at least 0", "num_workers=-1"]),
    (["train", "demo", "--seed", "-1"], ["seed", "between 0 and 4294967295", "seed=-1"]),
    (["train", "demo", "--num-nodes", "0"], ["num_nodes", "at least 1", "num_nodes=0"]),
    (["train", "demo", "--strategy", "gradual", "--unfreeze-every", "0"], ["unfreeze_every", "unfreeze_every=0"]),
    (["train", "demo", "--strategy", "partial", "--freeze-layers", "-1"], ["freeze_layers", "freeze_layers=-1"]),
    (
        ["train", "demo", "--unfreeze-every", "3"],
        ["unfreeze_every only applies to the gradual strategy", "unfreeze_every=3 with strategy='features'"],
    ),
    (["train", "demo", "--strategy", "half", "--unfreeze-every", "2"], ["unfreeze_every", "strategy='half'"]),
    (
        ["train", "demo", "--strategy", "scratch", "--weights", "weights.pth"],
        ["scratch", "random weights", "weights='weights.pth'"],
    ),
    (["compare", "demo", "--input-size", "100000"], ["input_size", "between 16 and 1024", "100000"]),
    (["compare", "demo", "--epochs", "0"], ["epochs", "at least 1", "epochs=0"]),
    (["compare", "demo", "--batch-size", "-1"], ["batch_size", "at least 1", "batch_size=-1"]),
    (["advise", "demo", "--input-size", "100000"], ["input_size", "between 16 and 1024", "100000"]),
    (["advise", "demo", "--input-size", "0"], ["input_size", "input_size=0"]),
    # Typer's own ranges (min=1): options of commands that make no TrainConfig.
    (["predict", "RUN", "photo.jpg", "--top-k", "0"], ["Invalid value for '--top-k'"]),
    (["predict", "RUN", "photo.jpg", "--batch-size", "0"], ["Invalid value for '--batch-size'"]),
]


@pytest.mark.parametrize("args, named", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_exit_2_naming_the_value_before_anything_is_written(args, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # compare and advise write under ./runs by default
    where = ["--runs-dir", str(tmp_path / "runs")] if args[0] in ("train", "compare") else []
    result = runner.invoke(app, [*args, *where], env={"HEADSTART_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"})
    output = " ".join(result.output.split())
    assert result.exit_code == 2, output
    assert all(text in output for text in named), output
    assert "Traceback" not in output
    assert not any(tmp_path.iterdir())  # no run or comparison folder, no cache


def test_force_input_size_reaches_the_config(monkeypatch, tmp_path):
    """--force-input-size lets an input size outside 16-1024 through, as force_input_size=True does."""
    import headstart.training.fit
    from headstart.config import resolve_config

    asked = {}

    def fake_fit(data, config_file=None, resume=None, progress=False, **options):
        asked.update(options)
        raise KeyboardInterrupt  # the CLI's Ctrl-C exit: nothing trains

    monkeypatch.setattr(headstart.training.fit, "fit", fake_fit)
    result = runner.invoke(
        app, ["train", "demo", "--input-size", "2048", "--force-input-size", "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 130 and asked["force_input_size"] is True
    assert resolve_config(overrides=asked).input_size == 2048
    assert "--force-input-size" in _help("train") and "16-1024" in _help("train")


def test_shell_completion_is_offered():
    top = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in top and "--show-completion" in top
    import os
    import subprocess
    import sys

    # The shell named, not detected from the processes above (make runs tests under sh, which Typer lacks).
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run(
        [sys.executable, "-m", "headstart", "--show-completion", "bash"], capture_output=True, text=True, env=env
    )
    assert shown.returncode == 0 and "complete" in shown.stdout and "headstart" in shown.stdout, shown.stderr
