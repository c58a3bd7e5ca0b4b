"""The input size, measured: the probe at two or three sizes around the photos' own and the weights'
native one; the smallest within a point of the best is recommended (``--input-size auto``), and a
run well below the native size is warned about, once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

import numpy as np
from PIL import Image

from headstart.checks import INPUT_SIZES
from headstart.config import TrainConfig
from headstart.data.dataset import Dataset
from headstart.models.factory import create_model

log = logging.getLogger(__name__)

# Input sizes: the smallest size whose k-NN accuracy is within this much of the best size's is
# recommended (a point: about the probe's own noise on a few hundred images; a larger size costs
# time at every epoch and every prediction).
SIZE_MARGIN = 0.01
# A size below this share of the weights' native one is "well below": train and compare say what it
# costs (128 px instead of 224 cost EfficientNet-Lite0 7.9 points on 160 px food photos: docs/benchmarks.md).
SMALL_SIZE_SHARE = 0.75


# --- the input size ---------------------------------------------------------------------------------


def photo_size(ds: Dataset, indices: list[int]) -> int:
    """The median shorter side of the images at ``indices``, in pixels, read from their headers only."""
    sides = []
    for i in indices:
        try:
            with Image.open(ds.samples[i].path) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):  # unreadable: the decoding says why
            continue
    return int(np.median(sides)) if sides else 0


def native_size(backbone: str, weights: str = "default") -> int:
    """The input size the weights were trained at (the model's without ``input_size``)."""
    return create_model(backbone, 2, weights=weights).body.preprocessing.input_size


def _round16(x: float) -> int:
    """A multiple of 16 (what the strided layers divide evenly), in the allowed range."""
    return int(min(INPUT_SIZES.high, max(INPUT_SIZES.low, 16 * round(x / 16))))


def candidate_sizes(photo: int, native: int, asked: int | None = None) -> list[int]:
    """The two or three input sizes probed: the photos' own (at most the native size), the weights'
    native one, and one between them (photos much smaller), or above it (photos much larger); the size
    asked for instead of that third one; and a cheaper one when the photos are the native size.

    >>> candidate_sizes(160, 224), candidate_sizes(100, 224), candidate_sizes(512, 224), candidate_sizes(224, 224)
    ([160, 224], [96, 144, 224], [224, 336], [128, 224])
    """
    low = _round16(min(photo, native)) if photo else native
    sizes = {low, native}
    if asked:
        sizes.add(asked)
    elif native >= 1.5 * low:
        sizes.add(_round16((low * native) ** 0.5))  # halfway, on a log scale
    elif photo >= 1.3 * native:
        sizes.add(_round16(min(photo, 1.5 * native)))  # detail the native size would throw away
    if len(sizes) == 1:
        sizes.add(_round16(0.6 * native))  # is the native size worth its cost?
    return sorted(sizes)


def choose_size(probes: dict[int, dict], margin: float = SIZE_MARGIN) -> dict:
    """The smallest probed size whose k-NN accuracy is within ``margin`` of the best; its gain in
    points and its cost in time against a reference (the smallest size; when it is the smallest
    itself, the best of the others), and both in words."""
    rows = [
        {"input_size": size, "knn": p["final_knn"], "seconds": p["probe_seconds"]} for size, p in sorted(probes.items())
    ]
    best = max(r["knn"] for r in rows)
    pick = next(r for r in rows if r["knn"] >= best - margin)
    out = {"sizes": rows, "input_size": pick["input_size"], "margin": margin}
    others = [r for r in rows if r is not pick]
    if not others:
        return {**out, "why": f"{pick['input_size']} px: the only size probed"}
    ref = (
        others[0]
        if others[0]["input_size"] < pick["input_size"]
        else max(others, key=lambda r: (r["knn"], r["input_size"]))
    )
    gain, cost = 100 * (pick["knn"] - ref["knn"]), pick["seconds"] / max(ref["seconds"], 1e-9)
    why = (
        f"{pick['input_size']} px: probe {pick['knn']:.0%} vs {ref['knn']:.0%} at {ref['input_size']} px, "
        f"{cost:.1f}x the time"
    )
    return {**out, "reference": ref["input_size"], "gain": round(gain, 1), "time_ratio": round(cost, 2), "why": why}


def input_size_warning(size: int | None, native: int, advice: dict | None = None) -> str | None:
    """One line when ``size`` is well below the weights' ``native`` size (SMALL_SIZE_SHARE): the points
    it scored under the native size on the probe where ``advice`` measured both, else a plain warning."""
    if size is None or size >= SMALL_SIZE_SHARE * native:
        return None
    knn = {r["input_size"]: r["knn"] for r in ((advice or {}).get("resolution") or {}).get("sizes", [])}
    if size in knn and native in knn:
        loss = 100 * (knn[native] - knn[size])
        if loss < 100 * SIZE_MARGIN:  # measured, and as good: nothing to warn about
            return None
        return (
            f"features at {size} px scored {loss:.0f} points under {native} px on the probe; "
            "--input-size auto picks the size"
        )
    return (
        f"--input-size {size} is well below the {native} px the weights were trained at, which usually costs "
        f"accuracy; measure it with `headstart advise DATA` or pass --input-size auto"
    )


_SAID: contextvars.ContextVar[set | None] = contextvars.ContextVar("said", default=None)


@contextlib.contextmanager
def said_once():
    """Within it, ``warn_input_size`` says each warning once (compare: once for all its runs)."""
    token = _SAID.set(set())
    try:
        yield
    finally:
        _SAID.reset(token)


def warn_input_size(cfg: TrainConfig, native: int) -> None:
    """Log ``input_size_warning`` for a run's config (not without pretrained weights: scratch, weights none)."""
    pretrained = cfg.strategy != "scratch" and cfg.weights != "none"
    text = input_size_warning(cfg.input_size, native, cfg.advice) if pretrained else None
    said = _SAID.get()
    if text and not (said is not None and text in said):
        log.warning(text)
        if said is not None:
            said.add(text)
