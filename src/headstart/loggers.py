"""Experiment trackers through Lightning's loggers, writing inside the run folder.

``--logger csv`` (``logs/csv/metrics.csv``), ``--logger tensorboard`` (``logs/tensorboard/``: open it with
``tensorboard --logdir runs/``), ``--logger mlflow`` (a local file store, ``mlruns/``; ``pip install
'headstart[mlflow]'``) and ``--logger wandb`` (offline, ``wandb/``; ``pip install 'headstart[wandb]'``;
``wandb sync`` uploads it later). Each gets the epoch's loss, accuracy, val_loss, val_accuracy and val_macro_f1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from headstart.errors import ConfigError

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
# What each needs installed, and the pip extra that brings it.
NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def check(names: list[str]) -> None:
    """Unknown names, or a logger whose package is missing, as a ConfigError that says what to install."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"Unknown logger '{name}'. Choose from: {', '.join(LOGGERS)}.")
        module, extra = NEEDS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"--logger {name} needs the package {module}: pip install 'headstart[{extra}]'")


def loggers(names: list[str], run_dir: Path) -> list:
    """Lightning loggers for ``names``, writing inside ``run_dir``."""
    check(names)
    from lightning.pytorch import loggers as lg

    made = {
        # logs/csv/metrics.csv, logs/tensorboard/events.*: one folder each, the same on resume
        "csv": lambda: lg.CSVLogger(save_dir=run_dir / "logs", name="csv", version=""),
        "tensorboard": lambda: lg.TensorBoardLogger(save_dir=run_dir / "logs", name="tensorboard", version="",
                                                    default_hp_metric=False),
        "mlflow": lambda: _mlflow(lg, run_dir),
        "wandb": lambda: lg.WandbLogger(name=run_dir.name, save_dir=run_dir, offline=True),
    }
    return [made[name]() for name in dict.fromkeys(names)]


def _mlflow(lg, run_dir: Path):
    import os

    # A local file store needs no server and works offline; MLflow 3 asks for this to allow it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return lg.MLFlowLogger(experiment_name="headstart", run_name=run_dir.name,
                           tracking_uri=(run_dir / "mlruns").resolve().as_uri())
