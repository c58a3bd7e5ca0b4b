"""Progress off a terminal: a line an epoch and a line each ~10 % of a long pass, on stderr; --quiet for none."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from headstart.cli.main import app


def test_a_line_an_epoch_and_progress_lines_off_a_terminal(tiny, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # a cold cache: decoding shows progress
    args = ["train", str(tiny), "--epochs", "3", "--input-size", "32", "--batch-size", "8", "--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--name", "lines"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    epochs = [line for line in lines if line.startswith("lines: epoch ")]  # a run with a --name says it
    assert [line.split(":")[1].strip() for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert re.fullmatch(
        r"lines: epoch 1/3: loss [\d.]+, accuracy [\d.]+, val_loss [\d.]+, val_accuracy [\d.]+, [\d.]+ s", epochs[0]
    )
    decoding = [line for line in lines if line.startswith("Decoding images (once): ")]
    assert decoding[0] == "Decoding images (once): 0/42" and decoding[-1].startswith(
        "Decoding images (once): 42/42 (100 %)"
    )
    assert 3 <= len(decoding) <= 12  # about every 10 %
    assert [line.split(":")[0] for line in lines if line.startswith("Computing") and line.endswith(": 0/1")] == [
        "Computing features (once) for training",
        "Computing features (once) for validation",
        "Computing features (once) for evaluation",
    ]  # 24, 9 and 9 images: one batch of 64 each

    quiet = CliRunner().invoke(app, ["--quiet", *args, "--name", "quiet"])
    assert quiet.exit_code == 0  # warnings still show (here: 32 px is well below the weights' 224); progress does not
    assert not [
        line for line in quiet.stderr.splitlines() if line.startswith(("quiet: epoch ", "Decoding", "Computing"))
    ]
    assert "Number of correctly identified images" in quiet.stdout


def test_compares_epoch_lines_say_which_run_they_belong_to(tiny, tmp_path: Path):
    args = [
        "compare",
        str(tiny),
        "--strategies",
        "features,features+tta",
        "--epochs",
        "2",
        "--input-size",
        "32",
        "--batch-size",
        "8",
        "--runs-dir",
        str(tmp_path),
        "--no-advise",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    epochs = [line.split(": loss")[0] for line in result.stderr.splitlines() if ": epoch " in line]
    assert epochs == [
        "features: epoch 1/2",
        "features: epoch 2/2",
        "features+tta: epoch 1/2",
        "features+tta: epoch 2/2",
    ]
