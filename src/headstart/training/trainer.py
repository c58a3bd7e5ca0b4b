"""The Lightning Trainer a run trains with: its checkpoints, averaging, early stopping, progress,
loggers, precision and processes, assembled from the run's config in one place.
"""

from __future__ import annotations

import lightning as L

from headstart.config import TrainConfig
from headstart.evaluation.metrics import MODE
from headstart.runs.folder import Run
from headstart.runs.layout import BEST
from headstart.training.averaging import Averaging
from headstart.training.callbacks import StreamPlace, _Bar, _Checkpoint
from headstart.training.distributed import Ranks, parse_devices, precision
from headstart.training.loggers import loggers
from headstart.utils.progress import in_terminal


def _trainer(cfg: TrainConfig, run: Run, ranks: Ranks, progress: bool, callbacks: list, logger=None) -> L.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping

    best = dict(monitor=cfg.monitor, mode=MODE[cfg.monitor])  # val_loss lowest; val_accuracy, val_macro_f1 highest
    cbs = [
        _Checkpoint(
            dirpath=run.checkpoints,
            filename=BEST,
            save_last=True,
            enable_version_counter=False,
            save_on_train_epoch_end=True,
            **best,
        ),
        StreamPlace(),
        *callbacks,
    ]
    if cfg.average != "none":  # validation and the checkpoints see the averaged weights
        cbs.insert(0, Averaging(cfg.average))
    if cfg.early_stopping:
        cbs.append(EarlyStopping(patience=cfg.early_stopping, **best))
    bar = progress and in_terminal()  # off a terminal, History prints a line an epoch instead
    if bar:
        cbs.append(_Bar())
    return L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=parse_devices(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy="ddp" if ranks.world > 1 else "auto",
        use_distributed_sampler=False,  # RankBatches shares them out
        precision=precision(cfg.precision),
        deterministic=cfg.deterministic,
        callbacks=cbs,
        enable_progress_bar=bar,
        logger=[
            *loggers(cfg.loggers, run.dir),
            *(logger if isinstance(logger, (list, tuple)) else [logger] if logger else []),
        ]
        or False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run.dir),
    )
