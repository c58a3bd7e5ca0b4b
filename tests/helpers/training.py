"""Callbacks that stop a run where a test wants it stopped."""

from __future__ import annotations

import lightning as L


class StopAfter(L.Callback):
    """Ctrl-C right after epoch ``epoch`` (and its checkpoint) finished."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt  # what Ctrl-C does


class StopMidEpoch(L.Callback):
    """Ctrl-C in the middle of epoch ``epoch``, before batch ``batch``."""

    def __init__(self, epoch: int = 0, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            raise KeyboardInterrupt


def explained(run) -> int:
    """The evaluation images a run's report drew with their class-activation maps (the most confidently wrong):
    each runs through the whole model once more."""
    from headstart.reporting.report import WRONG_SHOWN

    return min(WRONG_SHOWN, run.metrics["total"] - run.metrics["correct"])
