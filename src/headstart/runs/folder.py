"""A run: its folder (``<runs_dir>/<name>/``, laid out as ``headstart.runs.layout`` says), made when
nothing can fail on bad input any more, held by one training process at a time, resumed, and read
back with its config, history and metrics.

>>> run = Run.load("runs/efficientnet_lite0-features-...")                 # doctest: +SKIP
>>> run.metrics["accuracy"], run.best_checkpoint                          # doctest: +SKIP
(0.8167, PosixPath('runs/.../checkpoints/best.ckpt'))
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from headstart.config import TrainConfig, coerce, load_config, save_config
from headstart.errors import RunError
from headstart.runs.checkpoints import read_checkpoint, unfinished
from headstart.runs.layout import (
    BEST,
    CHECKPOINTS,
    CONFIG,
    DATA,
    EXPORT,
    HEAD_SEARCH,
    HISTORY,
    HISTORY_COLUMNS,
    LAST,
    LOCK,
    LR_FIND,
    MULTILABEL_COLUMNS,
    REPORT,
)
from headstart.utils.files import write_text

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A run folder with what it holds: its config, history and evaluation metrics."""

    dir: Path
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    interrupted: bool = False

    # --- where things are
    @property
    def checkpoints(self) -> Path:
        return self.dir / CHECKPOINTS

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / f"{BEST}.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / f"{LAST}.ckpt"

    @property
    def history_file(self) -> Path:
        return self.dir / HISTORY

    @property
    def data_file(self) -> Path:
        return self.dir / DATA

    @property
    def report(self) -> Path:
        return self.dir / REPORT

    @property
    def lr_find_file(self) -> Path:
        return self.dir / f"{LR_FIND}.csv"

    @property
    def head_search_file(self) -> Path:
        return self.dir / HEAD_SEARCH

    @property
    def lr_find_picture(self) -> Path:
        return self.picture(LR_FIND)

    def picture(self, name: str) -> Path:
        """``curves``, ``misclassified``, ``confusion_matrix`` (``-<split>`` for other splits), ``lr_find``: a PNG."""
        return self.dir / f"{name}.png"

    def metrics_file(self, split: str = "evaluation") -> Path:
        return self.dir / f"metrics{_suffix(split)}.json"

    def confusion_file(self, split: str = "evaluation", ext: str = "csv") -> Path:
        return self.dir / f"confusion_matrix{_suffix(split)}.{ext}"

    # --- reading and writing
    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunError(f"{path} is not a headstart run (no {CONFIG}). Pass a folder under runs/.")
        history = []
        if (path / HISTORY).is_file():
            with (path / HISTORY).open() as f:
                history = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        run = cls(path, load_config(path / CONFIG), history)
        if run.metrics_file().is_file():
            run.metrics = _read_json(run.metrics_file())
        return run

    @classmethod
    def create(cls, cfg: TrainConfig) -> "Run":
        """A new run under ``cfg.runs_dir``: ``cfg.name``, or ``<backbone>-<strategy>-<time>``.
        The folder itself is made by ``start``, once nothing can fail on bad input any more."""
        root = Path(cfg.runs_dir)
        if cfg.name:
            path = root / cfg.name
            if path.exists():
                raise RunError(f"Run folder {path} already exists. Pick another --name, or --resume {path}.")
            return cls(path, cfg)
        path = root / f"{cfg.backbone}-{cfg.strategy}-{datetime.now():%Y%m%d-%H%M%S}"
        return cls(_next_free(path) if path.exists() else path, cfg)

    def start(self, ds, resumed: bool = False) -> dict:
        """Claim the folder (made now: a new run's must not exist yet); write ``config.yaml`` and
        ``data.json`` (what was read). Returns the latter."""
        if not resumed:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            while True:  # made exclusively: of two runs given one --name at once, the second stops here
                try:
                    self.dir.mkdir()
                    break
                except FileExistsError:
                    if self.config.name:
                        raise RunError(
                            f"Run folder {self.dir} already exists (another run took it since this "
                            f"one started). Pick another --name, or --resume {self.dir}."
                        ) from None
                    self.dir = _next_free(self.dir)
        self.claim()
        # No name: the folder is this run's; `train --config` on this file runs it again in a new one.
        self.config = dataclasses.replace(self.config, name=None)
        save_config(
            self.config,
            self.dir / CONFIG,
            f"# headstart train --config {self.dir / CONFIG}   runs this again, in a new folder\n",
        )
        info = {
            "root": str(ds.root),
            "layout": ds.layout,
            "classes": ds.classes,
            "counts": ds.counts(),
            "fingerprint": data_fingerprint(ds),
            "problems": [{"path": str(p.path), "reason": p.reason} for p in ds.problems],
            "ignored": len(ds.ignored),
            "excluded": [str(p) for p in ds.excluded],  # left out by --exclude
        }
        write_text(self.data_file, json.dumps(info, indent=2) + "\n")
        return info

    def data_info(self) -> dict:
        return _read_json(self.data_file)

    def write_history(self, rows: list[dict]) -> None:
        buf = io.StringIO()
        extra = [k for k in MULTILABEL_COLUMNS if rows and k in rows[0]]  # multi-label runs' own figures
        writer = csv.DictWriter(buf, HISTORY_COLUMNS[:-4] + extra + HISTORY_COLUMNS[-4:])
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.history_file, buf.getvalue())

    def finished_checkpoint(self) -> Path:
        """The best checkpoint, or a RunError saying the run did not finish."""
        if not self.best_checkpoint.is_file():
            raise unfinished(self.dir)
        return self.best_checkpoint

    # --- resuming
    @classmethod
    def resume(cls, path: str | Path, asked: dict[str, Any]) -> "Run":
        """A run to continue from its ``last.ckpt``; options asked for now must agree with its config."""
        run = cls.load(path)
        cfg = run.config
        unknown = sorted(k for k in asked if not hasattr(cfg, k))
        if unknown:
            raise RunError(f"Unknown option(s): {', '.join(unknown)}.")
        diff = {k: (getattr(cfg, k), coerce(k, v)) for k, v in asked.items() if getattr(cfg, k) != coerce(k, v)}
        if diff:
            shown = ", ".join(f"{k}: the run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise RunError(
                f"Cannot resume {run.dir}: its config differs ({shown}). Resume without "
                "those options, or start a new run."
            )
        if run.last_checkpoint.is_file():
            read_checkpoint(run.last_checkpoint)  # damaged or unsafe: said now, not after the decoding
        else:
            log.warning(
                "%s never finished an epoch (no %s/%s.ckpt): training starts over, in the same folder.",
                run.dir,
                CHECKPOINTS,
                LAST,
            )
        return cls(run.dir, cfg)

    def claim(self) -> "Run":
        """Hold this run's folder for this process until ``release``: a second process training the same
        run (``--resume`` twice, or the same ``--name`` at once) gets a RunError instead of mixing files."""
        from filelock import FileLock, Timeout

        self.dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.dir / LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise RunError(
                f"{self.dir} is being trained by another process right now. Wait for it to end, or pick another --name."
            ) from None
        self._lock = lock
        return self

    def release(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def check_same_data(self, ds) -> "Run":
        """This run, if ``ds`` is the data it started with; else a RunError."""
        if self.data_info().get("fingerprint") != data_fingerprint(ds):
            raise RunError(
                f"Cannot resume {self.dir}: the data changed since it started (files added, removed "
                "or modified). Start a new run."
            )
        return self


def _next_free(path: Path) -> Path:
    """``path`` with the first free ``-N`` suffix (N >= 2)."""
    n = 2
    while (path.parent / f"{path.name}-{n}").exists():
        n += 1
    return path.parent / f"{path.name}-{n}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"Cannot read {path} ({e}). Was the run folder damaged? Train again, or restore it.") from None


def export_file(base: Path, suffix: str) -> Path:
    """Where an export goes by default: ``<run>/export/model<suffix>`` (beside a saved model:
    ``<its folder>/export/``)."""
    return Path(base) / EXPORT / f"model{suffix}"


def _suffix(split: str) -> str:
    return "" if split == "evaluation" else f"-{split}"


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def data_fingerprint(ds) -> str:
    """Which files, labels and splits a dataset is, and each file's size and modification time (prepared shards:
    their own fingerprint)."""
    h = hashlib.sha256()
    stream = getattr(ds, "stream", None)
    if stream is not None:  # prepared shards: fixed when prepared, named by their fingerprint; no file to stat
        h.update(f"shards|{stream.fingerprint}\n".encode())
    for s in ds.samples:
        identity = "shard" if stream is not None else "{0.st_size}|{0.st_mtime_ns}".format(s.path.stat())
        h.update(f"{s.path}|{s.label}|{s.split}|{identity}\n".encode())
    return h.hexdigest()[:16]
