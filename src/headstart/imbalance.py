"""Imbalanced classes: weights for the loss, a balanced draw, and the figure the best epoch goes by.

Food-11's training split is imbalanced 5.4 : 1. Three options of ``TrainConfig`` address it:

- ``class_weights="auto"``: each training image's loss is weighted by its class's
  ``w_c = N / (C * n_c)`` (scikit-learn's "balanced"), so every class weighs as much in total and
  the weights average 1 over the training images (the loss keeps its scale);
- ``sampler="balanced"``: each epoch draws its N images with replacement, every class equally
  likely (``headstart.frozen.EpochSampler``);
- ``monitor``: the validation figure that picks the best checkpoint and stops early —
  ``val_loss`` (lowest), ``val_accuracy`` or ``val_macro_f1`` (highest; every class counts alike).

>>> class_weights([0, 0, 0, 1], 2)
tensor([0.6667, 2.0000])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from headstart.config import MONITORS, TrainConfig

log = logging.getLogger(__name__)

# Which way each monitored figure is better (Lightning's ``mode``).
MODE = {m: "min" if m == "val_loss" else "max" for m in MONITORS}


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``w_c = N / (C * n_c)`` for the C classes that have training images (a class without any
    gets 0: no training image carries its weight). The mean over the N images is 1."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(labels) / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def loss_weights(cfg: TrainConfig, labels: Sequence[int], num_classes: int) -> torch.Tensor | None:
    """The training loss's class weights as ``cfg`` asks (None: unweighted)."""
    if cfg.class_weights == "none":
        return None
    if cfg.sampler == "balanced":
        log.warning("class_weights=auto with sampler=balanced corrects the imbalance twice: the rare classes "
                    "are drawn as often as the others and weigh more. Usually one of the two is enough.")
    return class_weights(labels, num_classes)


def balanced_draw_weights(labels: Sequence[int]) -> torch.Tensor:
    """One weight a sample, ``1 / n_c`` of its class: drawn by them, every class is equally likely."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    return 1.0 / torch.bincount(y).double()[y]


def confusion(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows true class, columns predicted, as floats (summed across ranks as they are)."""
    pairs = targets.long() * num_classes + predictions.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes).float()


def macro_f1(matrix: torch.Tensor) -> float:
    """The mean F1 over the classes that occur (true or predicted), from a confusion matrix: what
    ``sklearn.metrics.f1_score(average="macro")`` gives on the same predictions."""
    m = matrix.double()
    tp = m.diagonal()
    denominator = m.sum(0) + m.sum(1)  # 2 TP + FP + FN
    seen = denominator > 0
    return float((2 * tp[seen] / denominator[seen]).mean()) if seen.any() else 0.0


def best_epoch(history: Sequence[dict], monitor: str = "val_loss") -> int:
    """The epoch (from 1) the best checkpoint holds: the first with the best ``monitor`` (0: none).
    A row without the figure (a history written before it was recorded) never wins."""
    rows = [r for r in history if isinstance(r.get(monitor), (int, float))]
    if not rows:
        return 0
    pick = min if MODE[monitor] == "min" else max
    return pick(rows, key=lambda r: r[monitor])["epoch"]
