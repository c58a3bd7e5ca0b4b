"""The training loss: PyTorch's cross-entropy, or Keras' ``categorical_crossentropy`` for the seed
recipe, with class weights for imbalanced data.

- ``KerasCrossEntropy``: probabilities clipped to [1e-7, 1 - 1e-7], then -sum(y log p). Only a
  probability below 1e-7 tells it apart from PyTorch's cross-entropy on logits (the loss of one image
  stops at -log 1e-7 = 16.1, and its gradient at 0).
- ``class_weights="auto"``: each training image's loss is weighted by its class's
  ``w_c = N / (C * n_c)`` (scikit-learn's "balanced"), so every class weighs as much in total and the
  weights average 1 over the training images (the loss keeps its scale).

>>> class_weights([0, 0, 0, 1], 2)
tensor([0.6667, 2.0000])

Multi-label data (several classes an image) trains one sigmoid a class with binary cross-entropy
(``BinaryCrossEntropy``), averaged over the classes; ``class_weights="auto"`` there weighs each class's
positive term by ``n_negative / n_positive`` (``positive_weights``, PyTorch's ``pos_weight``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from headstart.config import TrainConfig
from headstart.training.optimizers import EPSILON

log = logging.getLogger(__name__)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``w_c = N / (C * n_c)`` for the C classes that have training images (a class without any
    gets 0: no training image carries its weight). The mean over the N images is 1."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(labels) / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def positive_weights(targets) -> torch.Tensor:
    """Multi-label: each class's positive weight ``n_negative / n_positive`` over the training images ((N, C)
    rows of 0 and 1), so its positives weigh as much as its negatives in total."""
    y = torch.as_tensor(targets, dtype=torch.float64)
    positives = y.sum(0)
    return ((len(y) - positives) / positives.clamp(min=1)).float()


def loss_weights(cfg: TrainConfig, labels, num_classes: int) -> torch.Tensor | None:
    """The training loss's class weights as ``cfg`` asks (None: unweighted): per class, or for multi-label
    targets ((N, C) rows) each class's positive weight."""
    if cfg.class_weights == "none":
        return None
    if cfg.task == "multi":
        return positive_weights(labels)
    if cfg.sampler == "balanced":
        log.warning(
            "class_weights=auto with sampler=balanced corrects the imbalance twice: the rare classes "
            "are drawn as often as the others and weigh more. Usually one of the two is enough."
        )
    return class_weights(labels, num_classes)


class KerasCrossEntropy(nn.Module):
    """Keras' categorical cross-entropy, one loss per image (``reduction="none"``), from logits:
    softmax, clip to [1e-7, 1 - 1e-7], -sum(y log p). Label smoothing as Keras': y (1 - s) + s / C.
    ``weight``: per-class weights, each image's loss times its class's (Keras' ``class_weight``)."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(1).clamp(EPSILON, 1 - EPSILON)
        y = nn.functional.one_hot(target, logits.shape[1]).to(probs.dtype)
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
        loss = -(y * probs.log()).sum(1)
        return loss * self.weight[target] if self.weight is not None else loss


class BinaryCrossEntropy(nn.Module):
    """Multi-label: a sigmoid a class and binary cross-entropy, averaged over the classes: one loss an image
    (``reduction="none"``). ``weight``: each class's positive weight (``positive_weights``). Label smoothing as
    Keras' ``binary_crossentropy``: y (1 - s) + s / 2. ``keras``: Keras' numerics, probabilities clipped to
    [1e-7, 1 - 1e-7]; else PyTorch's ``binary_cross_entropy_with_logits``."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0, keras: bool = False):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing, self.keras = label_smoothing, keras

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = target.float()
        if self.label_smoothing:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        if not self.keras:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits.float(), y, pos_weight=self.weight, reduction="none"
            )
            return loss.mean(1)
        p = logits.float().sigmoid().clamp(EPSILON, 1 - EPSILON)
        positive = y * p.log() * (self.weight if self.weight is not None else 1)
        return -(positive + (1 - y) * (1 - p).log()).mean(1)


def train_loss(kind: str, weight: torch.Tensor | None, label_smoothing: float, task: str = "single") -> nn.Module:
    """Each image's training loss: "torch" is ``nn.CrossEntropyLoss`` on logits, "keras" is Keras' on probabilities;
    for multi-label data (``task`` multi) their binary cross-entropy (``BinaryCrossEntropy``)."""
    if task == "multi":
        return BinaryCrossEntropy(weight, label_smoothing, keras=kind == "keras")
    if kind == "keras":
        return KerasCrossEntropy(weight, label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, reduction="none")
