"""Datasets: the images of a dataset, their classes and splits, read in any layout.

>>> ds = load_dataset("demo")                       # scan the files (fast, nothing decoded)
>>> ds.layout, ds.num_classes, ds.counts()["training"][:3]
('food11', 10, [100, 100, 100])

The layouts (food11, folders, csv) are read in ``headstart.data.layouts``, images decoded in
``headstart.data.images``, and a dataset checked and summarised in ``headstart.data.inspection``.

Splits that the data does not have (all of them but training for a single folder of class
folders, say) are drawn from the training images, stratified by class and seeded; for multi-label data
(several classes an image, ``headstart.data.layouts``) by iterative stratification
(``headstart.data.stratify``), which keeps every class's share in each split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.images import real_paths
from headstart.data.layouts import CLASSES_FILE, LABEL_SEPARATOR, SPLITS, Problem, Sample, label_ids, read_layout
from headstart.data.manifest import manifest_rows
from headstart.data.shards import URL_SCHEMES, is_prepared, is_url, open_shards
from headstart.data.stratify import iterative_stratification
from headstart.errors import DataError

log = logging.getLogger(__name__)

DEMO = "demo"


@dataclass
class Dataset:
    """The images of a dataset, their labels and splits, and the files that were left out."""

    root: Path
    layout: str
    classes: list[str]
    samples: list[Sample]
    ignored: list[Path] = field(default_factory=list)  # files that are not images
    problems: list[Problem] = field(default_factory=list)  # images that could not be read
    drawn: tuple[str, ...] = ()  # splits drawn from training because the data had none
    sources: dict[str, Path] = field(default_factory=dict)  # where each split was read from
    excluded: list[Path] = field(default_factory=list)  # images left out because a list (--exclude) named them
    task: str = "single"  # multi: several classes an image, each sample's label a tuple of class ids
    stream: Any = None  # prepared shards the images stream from (headstart.data.shards.Shards); None: files

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        return self.task == "multi"

    def label_name(self, label: int | tuple[int, ...]) -> str:
        """A sample's label as its class name; a multi-label sample's names joined as a manifest writes them."""
        return LABEL_SEPARATOR.join(self.classes[i] for i in label_ids(label))

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def without(self, problems: list[Problem]) -> "Dataset":
        """This dataset without the images in ``problems``, which join its problems (each logged)."""
        for p in problems:
            log.warning("skipping %s: %s", p.path, p.reason)
        bad = {p.path for p in problems}
        return dataclasses.replace(
            self, samples=[s for s in self.samples if s.path not in bad], problems=self.problems + problems
        )

    def counts(self) -> dict[str, list[int]]:
        """Images per class in each split: ``{"training": [994, 429, ...], ...}`` (multi-label: the images
        each class is one of the labels of)."""
        out = {}
        for split in SPLITS:
            c = Counter(i for s in self.samples if s.split == split for i in label_ids(s.label))
            out[split] = [c[i] for i in range(self.num_classes)]
        return out


# --- finding the data ---------------------------------------------------------------------


def demo_root() -> Path:
    """The embedded demo dataset: a Fashion-MNIST subset in the Food-11 layout."""
    return Path(str(resources.files("headstart") / "demo_data"))


def resolve_data(data: str | os.PathLike) -> Path:
    """The path behind DATA: the word ``demo`` means the embedded demo dataset."""
    if str(data) == DEMO:
        return demo_root()
    path = Path(data).expanduser()
    if not path.exists() and "://" in str(data):
        raise DataError(
            f"DATA '{data}': a URL of a kind headstart does not stream from. Prepared shards (headstart prepare) are "
            f"read from {', '.join(URL_SCHEMES)} URLs; other data from a folder or a CSV manifest on this machine."
        )
    if not path.exists():
        raise DataError(
            f"DATA '{data}' does not exist. Pass a dataset folder, a CSV manifest, "
            f"or the word '{DEMO}' for the embedded demo dataset."
        )
    return path.resolve()


# --- splits -------------------------------------------------------------------------------


def _draw_splits(samples: list[Sample], fractions: dict[str, float], seed: int) -> list[Sample]:
    """Move a fraction of every class's training images to each split in ``fractions``."""
    rng = np.random.default_rng(seed)
    out = [s for s in samples if s.split != "training"]
    for label in sorted({s.label for s in samples if s.split == "training"}):
        pool = [s for s in samples if s.split == "training" and s.label == label]
        order = rng.permutation(len(pool))
        start = 0
        for split, fraction in fractions.items():
            # At least one image of the class stays in training; rounding decides the rest.
            take = min(round(len(pool) * fraction), len(pool) - 1 - start)
            out += [Sample(pool[i].path, label, split) for i in order[start : start + max(take, 0)]]
            start += max(take, 0)
        out += [pool[i] for i in order[start:]]
    return sorted(out, key=lambda s: (SPLITS.index(s.split), str(s.path)))


def _draw_multilabel(samples: list[Sample], fractions: dict[str, float], seed: int) -> list[Sample]:
    """``_draw_splits`` for multi-label samples: iterative stratification (``headstart.data.stratify``) deals the
    training images into training and the drawn splits, keeping every class's share in each; a class left
    without a training image gets one back."""
    pool = [s for s in samples if s.split == "training"]
    names = ["training", *fractions]
    y = multi_hot([s.label for s in pool], 1 + max(i for s in pool for i in s.label)) > 0
    subset = iterative_stratification(
        y, [1 - sum(fractions.values()), *fractions.values()], np.random.default_rng(seed)
    )
    for c in np.flatnonzero(y.any(0) & ~y[subset == 0].any(0)):  # at least one image of each class stays in training
        subset[np.flatnonzero(y[:, c])[0]] = 0
    drawn = [Sample(s.path, s.label, names[k]) for s, k in zip(pool, subset)]
    return sorted(
        [s for s in samples if s.split != "training"] + drawn, key=lambda s: (SPLITS.index(s.split), str(s.path))
    )


def check_distinct(samples: list[Sample]) -> None:
    """Every sample is a different file, or a DataError: two names of one file (a link to another
    image of the dataset) would count it twice, or put it in training and in evaluation."""
    seen: dict[str, Sample] = {}
    for s, real in zip(samples, real_paths([s.path for s in samples])):
        first = seen.setdefault(real, s)
        if first is not s:
            a, b = sorted((first, s), key=lambda x: (x.path.is_symlink(), SPLITS.index(x.split)))  # the link last
            leak = ", a leak" if "training" in (a.split, b.split) else ""
            where = (
                f"in the {a.split} split twice"
                if a.split == b.split
                else f"in the {a.split} and the {b.split} split{leak}"
            )
            raise DataError(
                f"{a.path} and {b.path} are the same file ({real}): one image would be {where}. Keep one "
                "of them: delete the other (a link), or replace it with a copy of a different image."
            )


def check_splits(ds: Dataset) -> None:
    """Every split has images and every class has training images, or a DataError."""
    counts = ds.counts()
    for split in SPLITS:
        if sum(counts[split]) == 0:
            where = ds.sources.get(split, ds.root)
            if split == "training":
                fix = "."
            elif split in ds.drawn:
                share = "val_fraction" if split == "validation" else "eval_fraction"
                fix = f" (it was drawn from training, which is too small). Add images, or raise {share}."
            elif ds.layout == "csv":
                fix = f", or give no row the split {split} to draw it from training."
            else:
                fix = ", or remove the folder to draw it from training."
            raise DataError(f"The {split} split is empty: no usable images in {where}. Add images there{fix}")
    empty = [i for i, n in enumerate(counts["training"]) if n == 0]
    if empty:
        i = empty[0]
        names_from = ds.root / CLASSES_FILE if (ds.root / CLASSES_FILE).exists() else "the data"
        what = "no positive training image (no training image has it among its labels)"
        raise DataError(
            f"Class {i} '{ds.classes[i]}' has {what if ds.multi_label else 'no training images'} in "
            f"{ds.sources.get('training', ds.root)}. Add some, or remove the class from {names_from}."
        )


def _warn_unseen(ds: Dataset) -> None:
    """Classes without a validation image train, but the best epoch and early stopping cannot see them."""
    unseen = [c for c, n in zip(ds.classes, ds.counts()["validation"]) if n == 0]
    if unseen:
        log.warning(
            "%d class(es) have no validation image (%s): the best epoch and early stopping cannot see them. "
            "Add some to %s.",
            len(unseen),
            ", ".join(unseen[:5]) + (", ..." if len(unseen) > 5 else ""),
            ds.sources.get("validation", ds.root),
        )


def load_dataset(
    data: str | os.PathLike,
    layout: str | None = None,
    *,
    val_fraction: float = 0.2,
    eval_fraction: float = 0.2,
    seed: int = 0,
    allow_outside_root: bool = False,
    exclude: str | os.PathLike | None = None,
    task: str = "auto",
    stream_cache_gb: float | None = None,
) -> Dataset:
    """Scan a dataset (no image is decoded): its layout, classes, splits and ignored files.

    ``val_fraction``/``eval_fraction`` (default 0.2 each, close to the tutorial's Food-11
    split of 59/21/20 %) are used only for splits the data does not have. A CSV manifest's paths
    must stay inside its folder unless ``allow_outside_root``. ``exclude``: a CSV listing images to leave out
    (``excluding``), after the splits are drawn, so that the others stay in the splits they had. ``task``:
    single, multi or auto (multi when a manifest's row names several classes: ``headstart.data.layouts``).
    Prepared shards (a folder or URL ``headstart prepare`` wrote: ``headstart.data.shards``) come as prepared, their
    splits as drawn then; ``stream_cache_gb`` bounds what this machine caches of them.

    >>> ds = load_dataset("demo")
    >>> ds.layout, ds.num_classes, len(ds.split("evaluation"))
    ('food11', 10, 300)
    """
    for name, value in (("val_fraction", val_fraction), ("eval_fraction", eval_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1); received {name}={value}.")
    if val_fraction + eval_fraction >= 1:
        raise DataError(
            f"val_fraction + eval_fraction must leave images for training; received {val_fraction} + {eval_fraction}."
        )
    if is_prepared(data):
        return _prepared(str(data), exclude, task, stream_cache_gb)
    root = resolve_data(data)
    found = read_layout(root, layout, allow_outside_root=allow_outside_root, task=task)
    root = root.parent if root.is_file() else root  # a manifest's folder
    samples, sources = found.samples, found.sources
    check_distinct(samples)  # before splits are drawn: one file twice could be drawn into two
    if not any(s.split == "training" for s in samples) and not found.problems:
        raise DataError(
            f"No training images found in {sources.get('training', root)} (layout {found.layout}). "
            "Check the path and the layout."
        )
    # A split with a folder of its own is never drawn, even when the folder is empty (an error).
    present = set(sources) | {s.split for s in samples}
    wanted = {"validation": val_fraction, "evaluation": eval_fraction}
    drawn = {split: f for split, f in wanted.items() if split not in present}
    if drawn:
        samples = (_draw_multilabel if found.task == "multi" else _draw_splits)(samples, drawn, seed)
    ds = Dataset(
        root,
        found.layout,
        found.classes,
        samples,
        found.ignored,
        found.problems,
        tuple(drawn),
        sources,
        task=found.task,
    )
    if exclude is not None:
        ds = excluding(ds, Path(exclude))
    check_splits(ds)
    _warn_unseen(ds)
    return ds


def load_dataset_for(cfg, data: str | os.PathLike | None = None) -> Dataset:
    """The dataset of a run's config (a ``TrainConfig``), split as it was: its data, or ``data``
    (other data with the same classes; its layout is then detected)."""
    return load_dataset(
        data or cfg.data,
        cfg.layout if data is None else None,
        val_fraction=cfg.val_fraction,
        eval_fraction=cfg.eval_fraction,
        seed=cfg.seed,
        allow_outside_root=getattr(cfg, "allow_outside_root", False),
        exclude=getattr(cfg, "exclude", None),
        task=getattr(cfg, "task", "auto"),
        stream_cache_gb=getattr(cfg, "stream_cache_gb", None),
    )


def _prepared(data: str, exclude, task: str, cache_gb: float | None) -> Dataset:
    """The dataset of prepared shards, as ``headstart prepare`` found it (``headstart.data.shards``)."""
    shards = open_shards(data, cache_gb)
    meta = shards.meta
    if exclude is not None:
        raise DataError(
            f"--exclude {exclude}: {data} is prepared data, whose images are fixed when it is prepared. Prepare "
            "the data again without those images (remove them from the source), then train on that."
        )
    if task not in ("auto", meta["task"]):
        raise DataError(f"--task {task}: {data} was prepared as {meta['task']}-label data. Use --task auto.")
    ds = Dataset(
        shards.location if is_url(shards.location) else Path(shards.location),  # a URL stays as it is
        meta["layout"],
        list(meta["classes"]),
        shards.samples(),
        problems=[Problem(Path(p["path"]), p["reason"]) for p in meta["problems"]],
        drawn=tuple(meta["drawn"]),
        task=meta["task"],
        stream=shards,
    )
    check_splits(ds)
    _warn_unseen(ds)
    return ds


def excluding(ds: Dataset, listing: Path) -> Dataset:
    """``ds`` without the images ``listing`` names: a CSV whose first column is their paths (absolute, or relative
    to the CSV's folder; a ``path,...`` header left out), such as ``headstart audit``'s suspects.csv."""
    if not listing.is_file():
        raise DataError(
            f"--exclude {listing}: no such file. Pass a CSV whose first column lists the images to leave out "
            "(headstart audit writes one: suspects.csv)."
        )
    listed = [Path(row[0].strip()) for _, row in manifest_rows(listing) if row and row[0].strip()]
    names = set(real_paths([p if p.is_absolute() else listing.parent / p for p in listed]))
    reals = real_paths([s.path for s in ds.samples])
    keep = [s for s, r in zip(ds.samples, reals) if r not in names]
    left_out = [s.path for s, r in zip(ds.samples, reals) if r in names]
    if len(left_out) < len(names):
        log.warning(
            "%d of the %d images %s lists are not in %s", len(names) - len(left_out), len(names), listing, ds.root
        )
    log.info("left out %d images listed in %s", len(left_out), listing)
    return dataclasses.replace(ds, samples=keep, excluded=ds.excluded + left_out)


def split_indices(ds: Dataset) -> dict[str, tuple[list[int], list[int] | np.ndarray]]:
    """For each split, the sample indices and what training takes for their labels: class ids, or for a
    multi-label dataset (N, classes) float32 rows of 0 and 1 (``multi_hot``)."""
    out = {}
    for split in SPLITS:
        idx = [i for i, s in enumerate(ds.samples) if s.split == split]
        labels = [ds.samples[i].label for i in idx]
        out[split] = (idx, multi_hot(labels, ds.num_classes) if ds.multi_label else labels)
    return out


def multi_hot(labels, num_classes: int) -> np.ndarray:
    """(N, classes) float32: row n is 1 at the classes of ``labels[n]`` (an id or a tuple of ids), else 0."""
    out = np.zeros((len(labels), num_classes), np.float32)
    for n, label in enumerate(labels):
        out[n, list(label_ids(label))] = 1.0
    return out
