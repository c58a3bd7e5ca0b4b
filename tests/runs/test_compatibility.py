"""Runs written by headstart 0.1.0 (before the package was cut into layers) still evaluate, predict,
export and resume.

The fixture is the shape of a 0.1.0 checkpoint (``tests/fixtures/checkpoint-0.1.0.json``, read off a
run that version made: interrupted, with weight averaging, so every callback has state). Lightning
keys a callback's state by its class name, and the metadata says how to rebuild the model: a run made
now must have the same shape, and then everything that reads a run reads a 0.1.0 one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.config import TrainConfig
from headstart.runs.folder import Run
from headstart.training.fit import fit
from helpers.datasets import TINY_OPTIONS
from helpers.training import StopAfter

FORMAT = json.loads((Path(__file__).parent.parent / "fixtures" / "checkpoint-0.1.0.json").read_text())
runner = CliRunner()


def test_a_run_made_now_has_the_shape_of_a_0_1_0_run_and_everything_reads_it(tiny, tmp_path: Path):
    opts = dict(
        backbone="test_efficientnet",
        weights="none",
        strategy="half",
        average="ema",
        epochs=2,
        early_stopping=0,
        runs_dir=tmp_path,
        name="run",
        **TINY_OPTIONS,
    )
    run = fit(tiny, callbacks=[StopAfter(1)], **opts)
    ckpt = torch.load(run.last_checkpoint, weights_only=True, map_location="cpu")
    assert sorted(ckpt) == FORMAT["top_level"]
    assert {k: sorted(v) for k, v in ckpt["callbacks"].items()} == FORMAT["callbacks"]
    meta = ckpt["headstart"]
    assert sorted(meta) == FORMAT["headstart"]
    assert sorted(meta["model"]) == FORMAT["headstart_model"]
    assert sorted(meta["preprocessing"]) == FORMAT["headstart_preprocessing"]
    # A 0.1.0 config still reads: every key it wrote is an option today.
    assert set(FORMAT["headstart_config"]) <= {f.name for f in dataclasses.fields(TrainConfig)}

    resumed = runner.invoke(app, ["train", "--resume", str(run.dir)])
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in Run.load(run.dir).history] == [1, 2]
    for command in (
        ["evaluate", str(run.dir)],
        ["predict", str(run.dir), str(tiny / "evaluation")],
        ["export", str(run.dir), "--out", str(tmp_path / "model.onnx")],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
    assert (run.dir / "metrics.json").is_file() and (tmp_path / "model.onnx").is_file()
