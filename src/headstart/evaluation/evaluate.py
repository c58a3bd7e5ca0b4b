"""Evaluation: the tutorial's test evaluation (accuracy, number correct, confusion matrix) and
more — per-class precision/recall/F1, top-k accuracy, the most-confused pairs.

Computing is here, drawing in ``headstart.reporting.plots``, where files go in ``headstart.runs.folder``. Metrics
come from torchmetrics.

>>> ev = evaluate("runs/efficientnet_lite0-features-...")              # doctest: +SKIP
>>> ev.accuracy, ev.correct, ev.total                                  # doctest: +SKIP
(0.8167, 245, 300)

With ``tta=True`` the probabilities are also averaged with each image's mirror image
(``headstart.inference.predict.tta_views``): ``ev.tta_accuracy``, ``ev.tta_correct`` beside the plain numbers,
which stay those of one view (every other metric is of the plain view).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from headstart.data.cache import decoded_images
from headstart.data.dataset import load_dataset_for, split_indices
from headstart.data.layouts import SPLITS
from headstart.engines.choice import Engine
from headstart.errors import ConfigError, DataError
from headstart.evaluation.metrics import matrix_csv
from headstart.evaluation.multilabel import compute_multilabel
from headstart.inference.predict import predict_views
from headstart.reporting.plots import plot_confusion
from headstart.runs.checkpoints import load_checkpoint
from headstart.runs.folder import Run
from headstart.utils.devices import device as pick_device
from headstart.utils.files import check_writable_dir, write_text


@dataclass
class Evaluation:
    """Predictions on one split and everything computed from them (multi-label data:
    ``headstart.evaluation.multilabel.MultiLabelEvaluation``)."""

    task = "single"  # a class attribute, as MultiLabelEvaluation's field: not in to_dict

    split: str
    classes: list[str]
    targets: np.ndarray  # (N,) class ids
    probs: np.ndarray  # (N, C) softmax probabilities
    paths: list[str] = field(default_factory=list)
    accuracy: float = 0.0
    correct: int = 0
    total: int = 0
    loss: float = 0.0
    confusion: np.ndarray | None = None  # (C, C): rows true class, columns predicted
    per_class: list[dict] = field(default_factory=list)
    top_k: dict[int, float] = field(default_factory=dict)
    most_confused: list[dict] = field(default_factory=list)
    tta_probs: np.ndarray | None = None  # (N, C) averaged over the test-time views; None: no TTA
    tta_correct: int | None = None
    tta_accuracy: float | None = None

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(1)

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "loss": self.loss,
            "top_k": {f"top{k}": v for k, v in self.top_k.items()},
            "per_class": self.per_class,
            "most_confused": self.most_confused,
            "confusion_matrix": self.confusion.tolist() if self.confusion is not None else None,
            **(
                {"tta_accuracy": self.tta_accuracy, "tta_correct": self.tta_correct}
                if self.tta_probs is not None
                else {}
            ),
        }

    def confusion_csv(self) -> str:
        return matrix_csv(self.confusion, self.classes)

    def wrong_by_confidence(self, n: int = 16) -> list[int]:
        """Indices of the most confidently wrong predictions, most confident first."""
        wrong = np.flatnonzero(self.predictions != self.targets)
        return wrong[np.argsort(-self.probs[wrong].max(1), kind="stable")][:n].tolist()

    def wrong_shown(self, n: int = 16) -> list[tuple[int, int, str]]:
        """(image, class it was given, title) for the report's gallery of the most confidently wrong images."""
        return [
            (
                i,
                int(self.predictions[i]),
                f"true: {self.classes[self.targets[i]]}\n"
                f"pred: {self.classes[self.predictions[i]]} ({self.probs[i].max():.0%})",
            )
            for i in self.wrong_by_confidence(n)
        ]


def compute(
    targets: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    split: str = "evaluation",
    paths: list[str] | None = None,
    tta_probs: np.ndarray | None = None,
) -> Evaluation:
    """All the metrics of one split from its targets and predicted probabilities (``tta_probs``:
    those averaged over the test-time views, for the TTA accuracy)."""
    c = len(classes)
    t, p = torch.as_tensor(targets, dtype=torch.long), torch.as_tensor(probs, dtype=torch.float32)
    ev = Evaluation(split, list(classes), np.asarray(targets), np.asarray(probs), list(paths or []))
    ev.total = len(t)
    ev.correct = int((p.argmax(1) == t).sum())
    ev.accuracy = ev.correct / ev.total if ev.total else 0.0  # exact; torchmetrics' micro accuracy is float32
    ev.loss = float(torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), t)) if len(t) else 0.0
    ev.confusion = multiclass_confusion_matrix(p, t, num_classes=c).numpy()
    scores = {
        name: fn(p, t, num_classes=c, average=None).tolist()
        for name, fn in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }
    support = ev.confusion.sum(1)
    ev.per_class = [
        {
            "class": classes[i],
            "precision": scores["precision"][i],
            "recall": scores["recall"][i],
            "f1": scores["f1"][i],
            "support": int(support[i]),
        }
        for i in range(c)
    ]
    if c > 5:  # top-k means something only with more classes than k
        ev.top_k = {k: float(multiclass_accuracy(p, t, num_classes=c, top_k=k, average="micro")) for k in (3, 5)}
    off = [(int(ev.confusion[i, j]), i, j) for i in range(c) for j in range(c) if i != j and ev.confusion[i, j]]
    ev.most_confused = [
        {"true": classes[i], "predicted": classes[j], "count": n}
        for n, i, j in sorted(off, key=lambda x: (-x[0], x[1], x[2]))[:5]
    ]
    if tta_probs is not None:
        ev.tta_probs = np.asarray(tta_probs)
        ev.tta_correct = int((ev.tta_probs.argmax(1) == ev.targets).sum())
        ev.tta_accuracy = ev.tta_correct / ev.total if ev.total else 0.0
    return ev


def compute_split(targets, probs, classes, split, paths, tta_probs=None, thresholds=None):
    """``compute``, or for a multi-label model (its ``thresholds`` given: one a class) ``compute_multilabel``."""
    if thresholds is not None:
        return compute_multilabel(targets, probs, classes, thresholds, split, paths, tta_probs)
    return compute(targets, probs, classes, split, paths, tta_probs)


def write_evaluation(run: Run, ev: Evaluation, extra: dict | None = None) -> None:
    """What an evaluation leaves in the run folder: ``metrics.json`` (``metrics-<split>.json`` for
    another split), the confusion matrix as CSV and as a picture."""
    write_text(run.metrics_file(ev.split), json.dumps({**(extra or {}), **ev.to_dict()}, indent=2) + "\n")
    write_text(run.confusion_file(ev.split), ev.confusion_csv())
    picture = run.confusion_file(ev.split, "png")
    if ev.task == "multi":  # the co-occurrence of true and predicted labels
        plot_confusion(ev.confusion, ev.classes, picture, "True vs predicted labels (images)", ev.targets.sum(0))
    else:
        plot_confusion(ev.confusion, ev.classes, picture)


def evaluate(
    run: str | Path | Run,
    data: str | Path | None = None,
    split: str = "evaluation",
    progress: bool = False,
    device: str = "auto",
    tta: bool = False,
    engine: str = "auto",
    engine_precision: str = "fp32",
) -> Evaluation:
    """Evaluate a run's best checkpoint on a split of its data (or of ``data``, with the same
    classes), as ``headstart evaluate`` does, on ``device`` (``auto``: a GPU where there is one);
    write the results into the run folder. ``tta``: also with test-time augmentation (flip); ``engine``:
    what runs the model (``headstart.engines``; recorded in the metrics as ``engine``)."""
    run = run if isinstance(run, Run) else Run.load(run)
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}'. Choose one of: {', '.join(SPLITS)}.")
    check_writable_dir(run.dir, "The run folder")  # the results are written there, after minutes of work
    runs = Engine(engine, engine_precision)
    runs.candidates(pick_device(device))  # not installed, or bf16 without bf16 units: said now
    model, meta = load_checkpoint(run.finished_checkpoint())
    model.to(pick_device(device))
    ds = load_dataset_for(run.config, data)
    if ds.classes != meta["classes"]:
        raise DataError(
            f"The data's classes ({', '.join(ds.classes)}) are not the run's "
            f"({', '.join(meta['classes'])}). Evaluate on data with the same classes."
        )
    ds, store = decoded_images(ds, model.preprocessing, progress=progress)
    idx, targets = split_indices(ds)[split]
    multi = meta.get("task") == "multi"  # a multi-label model: its thresholds (0.5 each if it has none)
    thresholds = (meta.get("thresholds") or [0.5] * len(ds.classes)) if multi else None
    if multi != ds.multi_label:
        raise DataError(
            f"The run's model is {'multi' if multi else 'single'}-label and the data "
            f"{ds.root} is {ds.task}-label. Evaluate on data of the kind it was trained on."
        )
    # the plain view first
    views = predict_views(model, [store[i] for i in idx], tta=tta, engine=runs, sigmoid=multi)
    ev = compute_split(
        np.asarray(targets),
        views[0],
        ds.classes,
        split,
        [str(ds.samples[i].path) for i in idx],
        views.mean(0) if tta else None,
        thresholds,
    )
    old = run.metrics if split == "evaluation" else {}  # what training recorded beside the metrics
    # An earlier TTA figure would sit beside numbers it was not measured with: only this evaluation's.
    stale = {*ev.to_dict(), "tta_accuracy", "tta_correct", "tta_map"}
    write_evaluation(run, ev, {**{k: v for k, v in old.items() if k not in stale}, "engine": runs.used})
    return ev
