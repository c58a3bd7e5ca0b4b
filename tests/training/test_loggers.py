"""Lightning's loggers, writing inside the run folder: csv and TensorBoard out of the box, MLflow and
W&B as extras (a missing one is a clear error)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.errors import ConfigError
from headstart.training.fit import fit
from helpers.datasets import TINY_OPTIONS


def test_tensorboard_csv_and_a_logger_of_ones_own_get_the_epoch_metrics(tiny, tmp_path: Path):
    from lightning.pytorch.loggers import CSVLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mine = CSVLogger(save_dir=tmp_path / "mine", name="x")  # fit(logger=...): any Lightning logger
    run = fit(
        tiny,
        strategy="features",
        epochs=3,
        runs_dir=tmp_path / "runs",
        name="tb",
        loggers=["tensorboard", "csv"],
        logger=mine,
        **TINY_OPTIONS,
    )
    events = list((run.dir / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(run.dir).as_posix() for p in run.dir.rglob("*"))
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    assert {"val_loss", "val_accuracy", "loss", "accuracy"} <= set(board.Tags()["scalars"])
    logged = [e.value for e in board.Scalars("val_loss")]
    assert logged == pytest.approx([r["val_loss"] for r in run.history], rel=1e-5)  # one point an epoch
    with next((run.dir / "logs").rglob("metrics.csv")).open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(logged, rel=1e-5)
    with next((tmp_path / "mine").rglob("metrics.csv")).open() as f:
        assert [float(r["val_loss"]) for r in csv.DictReader(f) if r.get("val_loss")] == pytest.approx(logged, rel=1e-5)
    assert run.config.loggers == ["tensorboard", "csv"]


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not installed")
def test_mlflow_writes_a_local_store(tiny, tmp_path: Path):
    run = fit(tiny, strategy="features", epochs=2, runs_dir=tmp_path, name="ml", loggers=["mlflow"], **TINY_OPTIONS)
    assert list((run.dir / "mlruns").rglob("val_loss"))


def test_unknown_or_missing_loggers_are_clear_errors(tiny, tmp_path: Path):
    with pytest.raises(ConfigError, match="Unknown logger 'comet'. Choose from: csv, tensorboard, mlflow, wandb"):
        fit(tiny, loggers=["comet"], runs_dir=tmp_path)
    for name in ("mlflow", "wandb"):
        if importlib.util.find_spec(name) is None:
            result = CliRunner().invoke(app, ["train", str(tiny), "--logger", name, "--runs-dir", str(tmp_path)])
            assert result.exit_code == 2 and f"pip install 'headstart[{name}]'" in result.output
    assert not any(tmp_path.iterdir())
