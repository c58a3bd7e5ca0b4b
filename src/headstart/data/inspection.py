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
from pathlib import Path

import numpy as np

from headstart.data.dataset import Dataset, check_splits, load_dataset
from headstart.data.images import MAX_PIXELS, ImageInfo, decode_image, load_image
from headstart.data.layouts import Problem, Sample
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
    imbalance: float  # largest / smallest training class
    sizes: dict[str, dict[str, int]]  # {"width": {"min", "median", "max"}, "height": ...}
    distinct_sizes: int
    modes: dict[str, int]  # original colour modes (RGB, L, CMYK, ...) and how many of each
    formats: dict[str, int]
    drawn: list[str]
    problems: list[dict[str, str]]
    ignored: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(ds: Dataset, images: list[ImageInfo]) -> Summary:
    """Counts per split and class, imbalance, image sizes and the problems found."""
    counts = ds.counts()
    train = counts["training"]
    widths = np.array([i.width for i in images] or [0])
    heights = np.array([i.height for i in images] or [0])

    def stats(a: np.ndarray) -> dict[str, int]:
        return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())}

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
) -> Summary:
    """Scan and check a dataset; with ``out``, write the class distribution, samples and JSON.

    Nothing is written unless the whole dataset could be read: a DataError comes first.

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
    )
    if out is not None:
        check_writable_dir(out, "--out")  # before the minutes of checking, not after
    ds, images = verify_images(ds, max_pixels=max_pixels, progress=progress)
    summary = summarize(ds, images)
    if out is not None:
        out = Path(out)
        train = ds.split("training")
        # A seeded random 4x4 pick: sorted file order would show only the first class.
        picks = [train[i] for i in np.random.default_rng(seed).permutation(len(train))[:16]]
        plots.plot_class_distribution(summary.counts, ds.classes, out / DISTRIBUTION_PNG)
        plots.plot_samples(
            [load_image(s.path, max_pixels) for s in picks], [ds.classes[s.label] for s in picks], out / SAMPLES_PNG
        )
        write_text(out / SUMMARY_JSON, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
