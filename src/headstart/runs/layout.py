"""The run folder's layout: the name of every file and folder in it, in one place.

A run is ``<runs_dir>/<name>/``, a folder a person can browse::

    config.yaml               the resolved TrainConfig: enough to run it again
    data.json                 what was read: root, layout, classes, counts, fingerprint, problems
    history.csv               one row an epoch
    checkpoints/best.ckpt     the best epoch by validation loss, or by ``monitor`` (and last.ckpt, to resume)
    metrics.json              the evaluation split at the best checkpoint (metrics-<split>.json for others)
    confusion_matrix.csv/.png
    curves.png, misclassified.png, report.html
    lr_find.csv, lr_find.png  with lr_find: the learning-rate finder's curve (rate, smoothed loss)
    head_search.csv           with head_search: every candidate head's validation figures, and the one chosen
    .lock                     held by the process that trains the run (one at a time)
"""

from __future__ import annotations

CONFIG = "config.yaml"
DATA = "data.json"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"
BEST = "best"  # checkpoints/best.ckpt
LAST = "last"
REPORT = "report.html"
EXPORT = "export"
LR_FIND = "lr_find"  # lr_find.csv, lr_find.png
HEAD_SEARCH = "head_search.csv"
LOCK = ".lock"  # held while a process trains the run
# A history.csv written before val_macro_f1 was recorded reads the same, without it.
HISTORY_COLUMNS = [
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "backbone_lr",
    "trainable",
    "seconds",
]
MULTILABEL_COLUMNS = ["val_map"]  # after val_macro_f1, in a multi-label run's history.csv
