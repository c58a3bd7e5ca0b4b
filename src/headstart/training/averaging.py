"""Weight averaging (``average``): ema or swa of what trains.

Weight averaging keeps, beside the weights the optimizer moves, an average of them over training:
``ema`` an exponential moving average updated at every optimizer step (as timm's ModelEma), ``swa``
an equal average of the weights at the end of each of the last quarter of the epochs (stochastic
weight averaging, as ``torch.optim.swa_utils``). Only the trained part is averaged: the parameters
the optimizer holds and the BatchNorm statistics of the layers that train. A frozen backbone never
moves, so averaging it would only cost a copy of it.

The averaged weights are the model's face: validation runs on them (so the best checkpoint and
early stopping judge them), and every checkpoint's ``state_dict`` holds them (so evaluation,
``predict`` and ``export`` use them with no change). Training goes on from the optimizer's own
(raw) weights, kept in the callback's state so that a resumed run continues exactly.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn


def ema_decay(update: int, total_steps: int) -> float:
    """The EMA's decay at its ``update``-th update (0 first) in a run of ``total_steps`` optimizer steps.

    An EMA of decay d averages roughly the last 1 / (1 - d) steps. timm's default (0.9998, a window of
    5,000 steps) suits ImageNet runs of 100,000s of steps; a transfer run here has a few hundred, and
    such a window would keep the first, worst weights to the end. The window is a tenth of the run
    instead (the low-rate end of the cosine schedule, where the weights only jitter around a
    minimum), but never under 10 steps (decay 0.9 at least: below that it is barely an average).
    The warm-up, (1 + t) / (10 + t) as TensorFlow's ExponentialMovingAverage with num_updates, lets
    the early average follow the weights closely: validation judges it from the first epoch on.
    """
    cap = max(0.9, 1 - 1 / (0.1 * max(total_steps, 1)))
    return min(cap, (1 + update) / (10 + update))


def swa_start(epochs: int) -> int:
    """The first epoch (0-based) whose weights SWA averages: the last quarter of the epochs (at least one)."""
    return epochs - max(1, math.ceil(epochs / 4))


class Averaging(L.Callback):
    """Weight averaging (``ema`` or ``swa``) of what trains, on any LightningModule (see the module's docstring)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.names: list[str] = []  # the averaged tensors, by their names in the module's state_dict
        self.tensors: list[torch.Tensor] = []  # the module's own (parameters and BatchNorm statistics)
        self.averaged: list[torch.Tensor] = []
        self.updates = 0  # how many times the average was updated (0: it has nothing yet)
        self.raw: list[torch.Tensor] | None = None  # while validating: the optimizer's weights, set aside
        self._loaded: dict | None = None  # a checkpoint's state, applied once training starts

    # --- what is averaged

    def on_train_start(self, trainer, module) -> None:
        # The optimizer's parameters: what trains (gradual holds every group from the start; a group
        # not yet opened does not move, so its average is itself). BatchNorm statistics go with the
        # layers whose weights train: a frozen layer's never change.
        trained = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        state = module.state_dict(keep_vars=True)
        self.names = [n for n, p in module.named_parameters() if id(p) in trained]
        for prefix, m in module.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and id(m.weight) in trained:
                self.names += [f"{prefix}.running_mean", f"{prefix}.running_var"]
        self.tensors = [state[n] for n in self.names]
        self.total_steps = trainer.estimated_stepping_batches
        if self._loaded is not None:  # resumed: the checkpoint's state_dict held the averages; the raw weights are here
            with torch.no_grad():
                for t, n in zip(self.tensors, self.names):
                    t.copy_(self._loaded["raw"][n])
            self.averaged = [self._loaded["averaged"][n].to(t.device).clone() for t, n in zip(self.tensors, self.names)]
            self.updates, self._loaded = self._loaded["updates"], None
        else:
            self.averaged = [t.detach().clone() for t in self.tensors]
            self.updates = 0

    # --- updating the average

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if not self.tensors:
            return
        if self.kind == "ema":  # after every optimizer step
            update = get_ema_multi_avg_fn(ema_decay(self.updates, self.total_steps))
        elif batch_idx == trainer.num_training_batches - 1 and trainer.current_epoch >= swa_start(trainer.max_epochs):
            update = get_swa_multi_avg_fn()  # the epoch's last step: its weights join the equal average
        else:
            return
        # SWA's first update (an average of one) takes the weights as they are: lerp with weight 1/(0+1).
        update(self.averaged, [t.detach() for t in self.tensors], self.updates)
        self.updates += 1

    # --- validation sees the average; training the raw weights

    def on_validation_start(self, trainer, module) -> None:
        if self.updates and self.raw is None:
            self.raw = [t.detach().clone() for t in self.tensors]
            self._put(self.averaged)

    def on_validation_end(self, trainer, module) -> None:
        if self.raw is not None:
            self._put(self.raw)
            self.raw = None

    @torch.no_grad()
    def _put(self, values: list[torch.Tensor]) -> None:
        for t, v in zip(self.tensors, values):
            t.copy_(v)

    # --- checkpoints: the averaged weights are the model; the raw ones resume training

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        if self.updates:
            weights = checkpoint["state_dict"]
            for n, a in zip(self.names, self.averaged):
                weights[n] = a.detach().clone()

    def state_dict(self) -> dict:
        raw = self.raw if self.raw is not None else self.tensors  # Ctrl-C during validation: the set-aside ones
        return {
            "kind": self.kind,
            "updates": self.updates,
            "raw": {n: t.detach().clone() for n, t in zip(self.names, raw)},
            "averaged": {n: a.detach().clone() for n, a in zip(self.names, self.averaged)},
        }

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state if state.get("raw") else None
