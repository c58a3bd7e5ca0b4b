"""The figures training monitors, from confusion counts: macro F1 (every class counts alike), and
which epoch was best by the run's ``monitor`` (``val_loss`` lowest, ``val_accuracy`` and
``val_macro_f1`` highest).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence

import torch

from headstart.config import MONITORS

log = logging.getLogger(__name__)

# Which way each monitored figure is better (Lightning's ``mode``).
MODE = {m: "min" if m == "val_loss" else "max" for m in MONITORS}


def confusion(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows true class, columns predicted, as floats (summed across ranks as they are)."""
    pairs = targets.long() * num_classes + predictions.long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes).float()


def matrix_csv(matrix, classes: Sequence[str]) -> str:
    """A (C, C) matrix of counts, rows true and columns predicted, as CSV with the class names."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, matrix):
        w.writerow([name, *row.tolist()])
    return buf.getvalue()


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
