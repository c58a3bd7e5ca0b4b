"""Pictures of datasets and results, drawn with matplotlib and saved as PNG.

Every function here only draws: the numbers come from ``headstart.data`` (and later from
evaluation), so a plot can be redrawn without recomputing anything. Figures are made with
``matplotlib.figure.Figure`` directly, not pyplot, so nothing depends on a display or on
global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
from PIL import Image

from headstart._files import write_atomically

SPLIT_COLOURS = {"training": "#4C72B0", "validation": "#DD8452", "evaluation": "#55A868"}


def _save(fig: Figure, path: Path) -> Path:
    write_atomically(Path(path), lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return Path(path)


def plot_class_distribution(counts: dict[str, Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    """Horizontal bars of images per class, one panel per split (the tutorial's barh plot)."""
    splits = list(counts)
    height = max(3.0, 0.35 * len(classes) + 1.2)
    fig = Figure(figsize=(4.2 * len(splits), height))
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    for ax, split in zip(axes, splits):
        values = list(counts[split])
        bars = ax.barh(range(len(classes)), values, color=SPLIT_COLOURS.get(split, "#888888"), alpha=0.8)
        ax.bar_label(bars, padding=2, fontsize=8)
        ax.set_title(f"{split.capitalize()} ({sum(values):,} images)")
        ax.set_xlabel("Count")
        ax.set_xlim(0, max(values + [1]) * 1.18)
        ax.invert_yaxis()  # class 0 at the top, as in a table
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(classes)), labels=list(classes))
    fig.suptitle("Class distribution")
    return _save(fig, path)


def plot_samples(images: Sequence[Image.Image], titles: Sequence[str], path: Path, columns: int = 4) -> Path:
    """A grid of images with their class names as titles (the tutorial's 4x4 samples)."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(2.2 * columns, 2.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i])
            ax.set_title(titles[i], fontsize=9)
    fig.suptitle("Sample training images")
    fig.tight_layout()
    return _save(fig, path)
