"""Evaluation of multi-label data (several classes an image): torchmetrics' multilabel metrics at a threshold a
class chosen on the validation split.

- ``best_f1_thresholds``: each class's threshold, the probability where its F1 on the validation split is best
  (0.5 for a class with no positive there); a label is predicted when its probability reaches its threshold;
- ``compute_multilabel``: mean average precision (mAP, over the classes with a positive image; it needs no
  threshold), each class's AP, precision, recall and F1 at its threshold, micro and macro F1, exact-match
  accuracy (every label of the image right), Hamming loss (the share of wrong labels), the precision-recall
  curves and the co-occurrence of true and predicted labels.

>>> ev = compute_multilabel(targets, probs, classes, thresholds)      # doctest: +SKIP
>>> ev.map, ev.micro_f1, ev.accuracy                                 # doctest: +SKIP
(0.93, 0.88, 0.71)
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_hamming_distance,
    multilabel_precision,
    multilabel_precision_recall_curve,
    multilabel_recall,
)

from headstart.evaluation.metrics import matrix_csv

DEFAULT_THRESHOLD = 0.5  # a class that validation cannot tell about (no positive image there)


@contextmanager
def _quiet():
    """torchmetrics warns about a class with no positive image; such a class is left out of the means here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Nn]o (positive|negative) samples.*")
        yield


def _tensors(targets, probs) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.asarray(probs), dtype=torch.float32), torch.as_tensor(np.asarray(targets)).long()


def best_f1_thresholds(targets, probs) -> np.ndarray:
    """(C,) float32: for each class the probability at which its F1 over these images is highest (the lowest
    such, on a tie); ``DEFAULT_THRESHOLD`` for a class without a positive image."""
    p, t = _tensors(targets, probs)
    out = np.full(p.shape[1], DEFAULT_THRESHOLD, np.float32)
    if not len(p):
        return out
    with _quiet():
        precision, recall, thresholds = multilabel_precision_recall_curve(p, t, num_labels=p.shape[1])
    for c in range(p.shape[1]):
        if t[:, c].sum() == 0:
            continue
        pr, rc = precision[c][:-1].double(), recall[c][:-1].double()  # the last point (recall 0) has no threshold
        f1 = torch.where(pr + rc > 0, 2 * pr * rc / (pr + rc), torch.zeros_like(pr))
        out[c] = float(thresholds[c][int(f1.argmax())])
    return out


def average_precisions(targets, probs) -> np.ndarray:
    """(C,) each class's average precision; NaN for a class without a positive image."""
    p, t = _tensors(targets, probs)
    with _quiet():
        ap = multilabel_average_precision(p, t, num_labels=p.shape[1], average=None).double().numpy()
    ap[t.sum(0).numpy() == 0] = np.nan
    return ap


def mean_ap(targets, probs) -> float:
    """The mean of ``average_precisions`` over the classes with a positive image (0 when none has one)."""
    ap = average_precisions(targets, probs)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


@dataclass
class MultiLabelEvaluation:
    """Predictions of multi-label data on one split and everything computed from them."""

    split: str
    classes: list[str]
    targets: np.ndarray  # (N, C) 0 or 1
    probs: np.ndarray  # (N, C) a sigmoid a class
    thresholds: np.ndarray  # (C,) a label is predicted where probs >= its threshold
    paths: list[str] = field(default_factory=list)
    map: float = 0.0
    micro_f1: float = 0.0
    macro_f1: float = 0.0
    accuracy: float = 0.0  # exact match: every label of the image right
    correct: int = 0  # images with every label right
    total: int = 0
    hamming_loss: float = 0.0
    loss: float = 0.0  # binary cross-entropy, mean over images and classes
    per_class: list[dict] = field(default_factory=list)
    confusion: np.ndarray | None = None  # (C, C) co-occurrence: images with true label i and predicted label j
    curves: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (precision, recall) a class
    tta_probs: np.ndarray | None = None
    tta_correct: int | None = None
    tta_accuracy: float | None = None
    tta_map: float | None = None
    task: str = "multi"

    @property
    def predicted(self) -> np.ndarray:
        """(N, C) bool: the labels predicted, each class at its threshold."""
        return self.probs >= self.thresholds

    def to_dict(self) -> dict:
        return {
            "task": "multi",
            "split": self.split,
            "map": self.map,
            "micro_f1": self.micro_f1,
            "macro_f1": self.macro_f1,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "hamming_loss": self.hamming_loss,
            "loss": self.loss,
            "thresholds": [float(x) for x in self.thresholds],
            "per_class": self.per_class,
            "cooccurrence_matrix": self.confusion.tolist() if self.confusion is not None else None,
            **(
                {"tta_accuracy": self.tta_accuracy, "tta_correct": self.tta_correct, "tta_map": self.tta_map}
                if self.tta_probs is not None
                else {}
            ),
        }

    def confusion_csv(self) -> str:
        return matrix_csv(self.confusion, self.classes)

    def wrong_labels(self, n: int = 16) -> list[tuple[int, int, float]]:
        """The most confidently wrong labels, most confident first: (image, class, probability) for a label
        predicted that the image does not have (probability high) or one it has and was missed (probability low)."""
        wrong = np.argwhere(self.predicted != (self.targets > 0))
        sureness = [abs(self.probs[i, c] - self.thresholds[c]) for i, c in wrong]
        order = np.argsort(-np.asarray(sureness), kind="stable")[:n]
        return [(int(wrong[k][0]), int(wrong[k][1]), float(self.probs[tuple(wrong[k])])) for k in order]

    def wrong_shown(self, n: int = 16) -> list[tuple[int, int, str]]:
        """(image, class to show where the model saw it, title) for the report's gallery of wrong labels."""
        out = []
        for i, c, p in self.wrong_labels(n):
            kind = "missed" if self.targets[i, c] else "extra"
            true = "|".join(self.classes[j] for j in np.flatnonzero(self.targets[i])) or "none"
            out.append((i, c, f"{kind}: {self.classes[c]} ({p:.0%})\ntrue: {true}"))
        return out


def compute_multilabel(
    targets,
    probs,
    classes: list[str],
    thresholds=None,
    split: str = "evaluation",
    paths: list[str] | None = None,
    tta_probs=None,
) -> MultiLabelEvaluation:
    """Every multi-label metric of one split from its (N, C) targets and sigmoid probabilities, a label predicted
    where its probability reaches the class's threshold (``thresholds``, from validation; default 0.5 each)."""
    c = len(classes)
    p, t = _tensors(targets, probs)
    thr = np.full(c, DEFAULT_THRESHOLD, np.float32) if thresholds is None else np.asarray(thresholds, np.float32)
    ev = MultiLabelEvaluation(split, list(classes), t.numpy(), p.numpy(), thr, list(paths or []))
    ev.total = len(t)
    if not ev.total:
        return ev
    # torchmetrics at 0.5 on 0/1 predictions: each class at its own threshold
    hard = (p >= torch.from_numpy(thr)).float()
    ev.correct = int((hard.long() == t).all(1).sum())
    ev.accuracy = ev.correct / ev.total  # exact; torchmetrics' multilabel_exact_match is the same in float32
    with _quiet():
        ev.micro_f1 = float(multilabel_f1_score(hard, t, num_labels=c, average="micro"))
        ev.macro_f1 = float(multilabel_f1_score(hard, t, num_labels=c, average="macro"))
        ev.hamming_loss = float(multilabel_hamming_distance(hard, t, num_labels=c, average="micro"))
        scores = {
            name: fn(hard, t, num_labels=c, average=None).tolist()
            for name, fn in (
                ("precision", multilabel_precision),
                ("recall", multilabel_recall),
                ("f1", multilabel_f1_score),
            )
        }
        precision, recall, _ = multilabel_precision_recall_curve(p, t, num_labels=c)
    ev.loss = float(torch.nn.functional.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), t.float()))
    ap = average_precisions(t, p)
    ev.map = float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0
    support = t.sum(0).tolist()
    ev.per_class = [
        {
            "class": classes[i],
            "ap": None if np.isnan(ap[i]) else float(ap[i]),
            "precision": scores["precision"][i],
            "recall": scores["recall"][i],
            "f1": scores["f1"][i],
            "threshold": float(thr[i]),
            "support": int(support[i]),
        }
        for i in range(c)
    ]
    ev.confusion = (t.T.double() @ hard.double()).long().numpy()
    ev.curves = [(precision[i].numpy(), recall[i].numpy()) for i in range(c)]
    if tta_probs is not None:
        ev.tta_probs = np.asarray(tta_probs)
        ev.tta_correct = int(((ev.tta_probs >= thr) == (ev.targets > 0)).all(1).sum())
        ev.tta_accuracy = ev.tta_correct / ev.total
        ev.tta_map = mean_ap(ev.targets, ev.tta_probs)
    return ev
