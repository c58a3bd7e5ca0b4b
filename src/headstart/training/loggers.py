"""Experiment trackers through Lightning's loggers, writing inside the run folder.

``--logger csv`` (``logs/csv/metrics.csv``), ``--logger tensorboard`` (``logs/tensorboard/``: open it with
``tensorboard --logdir runs/``), ``--logger mlflow`` (a local file store, ``mlruns/``; ``pip install
'headstart[mlflow]'``) and ``--logger wandb`` (offline, ``wandb/``; ``pip install 'headstart[wandb]'``;
``wandb sync`` uploads it later). Each gets the epoch's loss, accuracy, val_loss, val_accuracy and val_macro_f1.
"""

from __future__ import annotations

from pathlib import Path

from headstart.checks import check_loggers


def loggers(names: list[str], run_dir: Path) -> list:
    """Lightning loggers for ``names``, writing inside ``run_dir``."""
    check_loggers(names)
    from lightning.pytorch import loggers as lg

    made = {
        # logs/csv/metrics.csv, logs/tensorboard/events.*: one folder each, the same on resume
        "csv": lambda: lg.CSVLogger(save_dir=run_dir / "logs", name="csv", version=""),
        "tensorboard": lambda: lg.TensorBoardLogger(
            save_dir=run_dir / "logs", name="tensorboard", version="", default_hp_metric=False
        ),
        "mlflow": lambda: _mlflow(lg, run_dir),
        "wandb": lambda: lg.WandbLogger(name=run_dir.name, save_dir=run_dir, offline=True),
    }
    return [made[name]() for name in dict.fromkeys(names)]


def _mlflow(lg, run_dir: Path):
    import os

    # A local file store needs no server and works offline; MLflow 3 asks for this to allow it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return lg.MLFlowLogger(
        experiment_name="headstart", run_name=run_dir.name, tracking_uri=(run_dir / "mlruns").resolve().as_uri()
    )
