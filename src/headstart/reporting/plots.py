"""Pictures of datasets and results, drawn with matplotlib and saved as PNG.

Every function here only draws: the numbers come from the layers above (an inspection's counts, a
run's history, an evaluation, the learning-rate finder's curve), so a plot can be redrawn without
recomputing anything. Figures are made with ``matplotlib.figure.Figure`` directly, not pyplot, so
nothing depends on a display or on global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from headstart.utils.files import write_atomically

SPLIT_COLOURS = {"training": "#4C72B0", "validation": "#DD8452", "evaluation": "#55A868"}


def _save(fig: Figure, path: Path) -> Path:
    kind = "svg" if Path(path).suffix.lower() == ".svg" else "png"  # PNG unless asked for SVG
    write_atomically(Path(path), lambda f: fig.savefig(f, format=kind, dpi=110, bbox_inches="tight"))
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


def plot_samples(
    images: Sequence[Image.Image],
    titles: Sequence[str],
    path: Path,
    columns: int = 4,
    title: str = "Sample training images",
) -> Path:
    """A grid of images with their class names as titles (the tutorial's 4x4 samples)."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(2.2 * columns, 2.4 * rows), layout="constrained")  # the title above the top row
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i])
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_history(history: Sequence[dict], path: Path, best_epoch: int | None = None, title: str = "") -> Path:
    """The tutorial's two panels: accuracy and loss per epoch, training vs validation, best epoch marked."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    for ax, key, name in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, [r[key] for r in history], "o-", label="training", color=SPLIT_COLOURS["training"])
        ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label="validation", color=SPLIT_COLOURS["validation"])
        if best_epoch:
            ax.axvline(best_epoch, color="#555555", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.set_title(f"Model {name.lower()}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if key == "accuracy" else "upper right")
    axes[0].set_ylim(0, 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _matrix(ax, matrix, classes: Sequence[str], title: str, fmt: str, short: bool = False) -> None:
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    ax.imshow(m, cmap="Blues", vmin=0, vmax=max(m.max(), 1e-9))
    labels = [c if len(c) <= 14 else c[:13] + "…" for c in classes]
    ax.set_xticks(range(len(classes)), labels=labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), labels=[] if short else labels, fontsize=8)
    ax.set_xlabel("Predicted")
    if not short:
        ax.set_ylabel("True")
    ax.set_title(title)
    if len(classes) <= 15:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                value = int(m[i, j]) if fmt == "d" else m[i, j]
                ax.text(
                    j,
                    i,
                    format(value, fmt),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] > 0.6 * m.max() else "black",
                )


def plot_confusion(confusion, classes: Sequence[str], path: Path, title: str | None = None, row_totals=None) -> Path:
    """The confusion matrix as a heat map: counts, and each row normalised (recall on the diagonal). ``title`` and
    ``row_totals``: another matrix of counts, rows true and columns predicted (multi-label data's co-occurrence of
    true and predicted labels), each row divided by its total (the images with that true label)."""
    import numpy as np

    cm = np.asarray(confusion)
    totals = cm.sum(1) if row_totals is None else np.asarray(row_totals)
    rows = cm / np.maximum(totals, 1)[:, None]
    titles = (
        (title or "Confusion matrix (counts)"),
        (
            "Row-normalised (recall on the diagonal)"
            if row_totals is None
            else "Share of the images with the true label (recall on the diagonal)"
        ),
    )
    size = max(5.0, 0.45 * len(classes) + 2.5)
    fig = Figure(figsize=(2 * size, size))
    a, b = fig.subplots(1, 2)
    _matrix(a, cm, classes, titles[0], "d" if cm.dtype.kind in "iu" else ".0f")
    _matrix(b, rows, classes, titles[1], ".2f", short=True)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusions(matrices: dict[str, object], classes: Sequence[str], path: Path) -> Path:
    """Several runs' row-normalised confusion matrices side by side, two to a row."""
    import numpy as np

    n = len(matrices)
    cols = min(n, 2)
    rows = -(-n // cols)
    size = max(4.5, 0.4 * len(classes) + 2.5)
    fig = Figure(figsize=(size * cols, (size + 0.4) * rows))
    axes = fig.subplots(rows, cols, squeeze=False).flat
    for k, ax in enumerate(axes):
        if k >= n:
            ax.axis("off")
            continue
        name, cm = list(matrices.items())[k]
        cm = np.asarray(cm)
        _matrix(ax, cm / np.maximum(cm.sum(1, keepdims=True), 1), classes, name, ".2f", short=k % cols > 0)
    fig.tight_layout()
    return _save(fig, path)


def plot_histories(histories: dict[str, Sequence[dict]], path: Path) -> Path:
    """Validation accuracy and loss of several runs, overlaid."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        axes[0].plot(epochs, [r["val_accuracy"] for r in rows], "o-", label=name, markersize=3)
        axes[1].plot(epochs, [r["val_loss"] for r in rows], "o-", label=name, markersize=3)
    for ax, name in zip(axes, ("Validation accuracy", "Validation loss")):
        ax.set_title(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 1)
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_find(result, path: Path) -> Path:
    """The learning-rate finder's curve (``headstart.training.lr_finder.LRFind``): smoothed loss against the
    rate on a log axis, the suggested rate marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color=SPLIT_COLOURS["training"])
    ax.set_xscale("log")
    if result.suggestion:
        ax.axvline(
            result.suggestion, color="#C44E52", linestyle="--", linewidth=1, label=f"chosen lr {result.suggestion:.2g}"
        )
        ax.legend(loc="upper left")
    ax.set_xlabel("Learning rate (log scale)")
    ax.set_ylabel("Training loss (smoothed)")
    ax.set_title("Learning-rate finder")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def plot_explanation(image, overlaid, top: Sequence[tuple[str, float]], path: Path, title: str = "") -> Path:
    """One explained photo: the photo, its class-activation map over it, and its top classes as bars."""
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.3]})
    for ax, picture, name in ((axes[0], image, "photo"), (axes[1], overlaid, f"where it sees {top[0][0]}")):
        ax.imshow(picture)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    names, probs = [c for c, _ in top], [p for _, p in top]
    bars = axes[2].barh(range(len(top)), probs, color=SPLIT_COLOURS["training"], alpha=0.8)
    axes[2].bar_label(bars, labels=[f"{p:.1%}" for p in probs], padding=2, fontsize=8)
    axes[2].set_yticks(range(len(top)), labels=names)
    axes[2].set_xlim(0, 1.2)
    axes[2].invert_yaxis()
    axes[2].set_title("top classes", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_pr_curves(curves, classes: Sequence[str], per_class: Sequence[dict], path: Path) -> Path:
    """Multi-label: each class's precision-recall curve (``curves``: (precision, recall) a class), its AP in the
    legend and a dot where its threshold puts it (``per_class``' precision and recall)."""
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    colours = _colours(len(classes))
    for (precision, recall), name, row, colour in zip(curves, classes, per_class, colours):
        ap = "—" if row.get("ap") is None else f"{row['ap']:.3f}"
        ax.plot(recall, precision, color=colour, label=f"{name} (AP {ap})", drawstyle="steps-post")
        ax.plot([row["recall"]], [row["precision"]], "o", color=colour)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall, a class")
    ax.legend(fontsize="small", loc="lower left", ncol=2 if len(classes) > 8 else 1)
    fig.tight_layout()
    return _save(fig, path)


def _colours(n: int) -> list:
    """``n`` colours that tell lines apart (tab10, then tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
