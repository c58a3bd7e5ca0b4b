"""Inspect a dataset: decode every image once, drop the broken ones, summarise, draw.

The tutorial's first steps (how many images per class, a bar chart of them, a grid of samples),
plus what a real dataset needs checked: unreadable files, sizes, colour modes, imbalance.

>>> summary = inspect_dataset("demo", "runs/inspect-demo")   # writes the pictures and JSON
>>> summary.counts["training"][:3], summary.imbalance
([100, 100, 100], 1.0)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data.dataset import Dataset, check_splits, load_dataset
from headstart.data.images import MAX_PIXELS, ImageInfo, decode_image, load_image
from headstart.data.layouts import Problem, Sample, label_ids
from headstart.errors import ImageError
from headstart.utils.files import check_writable_dir, write_text
from headstart.utils.progress import track


def verify_images(
    ds: Dataset, *, max_pixels: int = MAX_PIXELS, progress: bool = True, workers: int | None = None
) -> tuple[Dataset, list[ImageInfo]]:
    """Decode every image once; return the dataset without the broken ones, and what each was.

    Broken images (corrupt, truncated, empty, over ``max_pixels``) are dropped, added to
    ``problems`` with their reason, and logged as a warning; the splits are checked again.
    """

    def check(sample: Sample) -> ImageInfo | Problem:
        try:
            return decode_image(sample.path, max_pixels)[1]
        except ImageError as e:
            return Problem(sample.path, str(e))

    # Pillow releases the GIL while decoding, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(track(pool.map(check, ds.samples), len(ds.samples), "Checking images", progress))
    clean = ds.without([r for r in results if isinstance(r, Problem)])
    check_splits(clean)
    return clean, [r for r in results if isinstance(r, ImageInfo)]


# --- summary ------------------------------------------------------------------------------


@dataclass
class Summary:
    """What ``headstart inspect`` reports about a dataset."""

    root: str
    layout: str
    classes: list[str]
    counts: dict[str, list[int]]
    imbalance: float  # largest / smallest training class (multi-label: in images with the class as a label)
    sizes: dict[str, dict[str, int]]  # {"width": {"min", "median", "max"}, "height": ...}
    distinct_sizes: int
    modes: dict[str, int]  # original colour modes (RGB, L, CMYK, ...) and how many of each
    formats: dict[str, int]
    drawn: list[str]
    problems: list[dict[str, str]]
    ignored: list[str]
    # multi-label data only (several classes an image; counts are then the images each class is a label of)
    task: str = "single"
    labels_per_image: dict[str, float] | None = None  # {"mean", "max", "1": images with one label, "2": ...}
    cooccurrences: list[dict] | None = None  # the pairs of labels most often on one image: {"labels", "images"}

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.task == "single":  # a single-label summary as it always was
            for key in ("task", "labels_per_image", "cooccurrences"):
                out.pop(key)
        return out


COOCCURRENCES_SHOWN = 10


def label_statistics(ds: Dataset) -> tuple[dict[str, float], list[dict]]:
    """Multi-label data: how many labels an image has, and the pairs of labels most often on one image."""
    sizes = Counter(len(s.label) for s in ds.samples)
    per_image = {
        "mean": round(sum(n * c for n, c in sizes.items()) / max(len(ds.samples), 1), 3),
        "max": max(sizes, default=0),
        **{str(n): sizes[n] for n in sorted(sizes)},
    }
    pairs = Counter(pair for s in ds.samples for pair in combinations(s.label, 2))
    top = sorted(pairs.items(), key=lambda x: (-x[1], x[0]))[:COOCCURRENCES_SHOWN]
    return per_image, [{"labels": [ds.classes[a], ds.classes[b]], "images": n} for (a, b), n in top]


def summarize(ds: Dataset, images: list[ImageInfo]) -> Summary:
    """Counts per split and class, imbalance, image sizes and the problems found."""
    counts = ds.counts()
    train = counts["training"]
    widths = np.array([i.width for i in images] or [0])
    heights = np.array([i.height for i in images] or [0])

    def stats(a: np.ndarray) -> dict[str, int]:
        return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())}

    multi = label_statistics(ds) if ds.multi_label else (None, None)
    return Summary(
        root=str(ds.root),
        layout=ds.layout,
        classes=list(ds.classes),
        counts=counts,
        imbalance=round(max(train) / max(min(train), 1), 2),
        sizes={"width": stats(widths), "height": stats(heights)},
        distinct_sizes=len({(i.width, i.height) for i in images}),
        modes=dict(Counter(i.mode for i in images).most_common()),
        formats=dict(Counter(i.format for i in images).most_common()),
        drawn=list(ds.drawn),
        problems=[{"path": str(p.path), "reason": p.reason} for p in ds.problems],
        ignored=[str(p) for p in ds.ignored],
        task=ds.task,
        labels_per_image=multi[0],
        cooccurrences=multi[1],
    )


# --- inspect: all of the above, plus pictures ---------------------------------------------

DISTRIBUTION_PNG = "class_distribution.png"
SAMPLES_PNG = "samples.png"
SUMMARY_JSON = "inspect.json"


def inspect_dataset(
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    layout: str | None = None,
    val_fraction: float = 0.2,
    eval_fraction: float = 0.2,
    seed: int = 0,
    max_pixels: int = MAX_PIXELS,
    progress: bool = True,
    allow_outside_root: bool = False,
    task: str = "auto",
    stream_cache_gb: float | None = None,
) -> Summary:
    """Scan and check a dataset; with ``out``, write the class distribution, samples and JSON.

    Nothing is written unless the whole dataset could be read: a DataError comes first. Prepared shards
    (``headstart prepare``) are summarised from what their manifest noted; the samples are drawn from the shards.

    >>> summary = inspect_dataset("demo", "runs/inspect-demo")
    >>> summary.imbalance
    1.0
    """
    from headstart.reporting import plots as plots  # matplotlib loads only when pictures are drawn

    ds = load_dataset(
        data,
        layout,
        val_fraction=val_fraction,
        eval_fraction=eval_fraction,
        seed=seed,
        allow_outside_root=allow_outside_root,
        task=task,
        stream_cache_gb=stream_cache_gb,
    )
    if out is not None:
        check_writable_dir(out, "--out")  # before the minutes of checking, not after
    if ds.stream is None:
        ds, images = verify_images(ds, max_pixels=max_pixels, progress=progress)
    else:  # prepared shards: checked when prepared, which noted what each image was
        images = ds.stream.image_infos()
    summary = summarize(ds, images)
    if out is not None:
        out = Path(out)
        train = ds.split("training")
        # A seeded random 4x4 pick: sorted file order would show only the first class.
        picks = [train[i] for i in np.random.default_rng(seed).permutation(len(train))[:16]]
        plots.plot_class_distribution(summary.counts, ds.classes, out / DISTRIBUTION_PNG)
        shards = ds.stream.store(picks, ds.stream.preprocessing) if ds.stream is not None else None
        plots.plot_samples(
            [
                load_image(s.path, max_pixels) if shards is None else Image.fromarray(shards[i])
                for i, s in enumerate(picks)
            ],
            ["|".join(ds.classes[i] for i in label_ids(s.label)) for s in picks],
            out / SAMPLES_PNG,
        )
        write_text(out / SUMMARY_JSON, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
