"""``headstart audit DATA``: what is wrong in a dataset, from the frozen features training computes (and
keeps: an audit after training, or training after an audit, computes them once).

>>> found = headstart.audit("photos/")                                        # doctest: +SKIP
>>> len(found.leaks), len(found.label_issues)                                 # doctest: +SKIP
(3, 41)

Writes ``audit.html`` (the photos side by side), ``audit.json`` (everything found, with paths) and
``suspects.csv``: the photos to leave out, in the manifest format (path,label,split), to edit and pass to
``headstart train DATA --exclude suspects.csv``. What is looked for: ``headstart.auditing.duplicates`` (exact and
near duplicates, leaks between splits) and ``headstart.auditing.suspects`` (label mistakes, outliers, blanks).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headstart.auditing import duplicates as D
from headstart.auditing import suspects as S
from headstart.config import as_trained, resolve_config
from headstart.data.cache import ImageStore, decoded_images
from headstart.data.dataset import Dataset, demo_root, load_dataset, split_indices
from headstart.data.images import MAX_PIXELS, decode_image
from headstart.data.layouts import SPLITS
from headstart.engines.choice import Engine
from headstart.errors import DataError
from headstart.models.features import extract_features, frozen_key, load_frozen, save_frozen
from headstart.reporting.report import render
from headstart.training.distributed import Ranks
from headstart.training.fit import build_model
from headstart.training.frozen_pass import frozen_rows, training_inputs
from headstart.utils.files import check_writable_dir, write_text

log = logging.getLogger(__name__)

AUDIT_JSON, AUDIT_HTML, SUSPECTS_CSV = "audit.json", "audit.html", "suspects.csv"
CALIBRATION_IMAGES = 64  # copies made to calibrate the near-duplicate threshold
SHOWN = 60  # photos (or pairs) a section of audit.html shows; audit.json has them all


@dataclass
class Audit:
    """What an audit found; indices are into ``ds.samples``."""

    ds: Dataset
    exact: list[list[int]] = field(default_factory=list)  # groups of the same decoded pixels
    near: list[tuple[int, int, float, float]] = field(default_factory=list)  # (i, j, features', thumbnails' similarity)
    calibration: dict = field(default_factory=dict)
    label_issues: list[tuple[int, int, float]] = field(default_factory=list)  # (index, suggested class, p(given))
    outliers: list[tuple[int, float]] = field(default_factory=list)
    blank: list[tuple[int, float]] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    about: dict = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        """Every duplicate as a pair: an exact group's later members with its first (similarity 1), then near ones."""
        return [(g[0], j, 1.0) for g in self.exact for j in g[1:]] + [p[:3] for p in self.near]

    @property
    def leaks(self) -> list[tuple[int, int, float]]:
        """Duplicates in two splits: a photo seen in training (or validation) and scored on again."""
        split = lambda i: self.ds.samples[i].split
        return [p for p in self.pairs if split(p[0]) != split(p[1])]

    def suspects(self) -> dict[int, str]:
        """The photos to leave out, each with why: of a duplicate, the copy in the later split (evaluation after
        validation after training: a leak is closed where it is scored) or the later file; then label
        mistakes, outliers and blanks."""
        order = {s: n for n, s in enumerate(SPLITS)}
        out: dict[int, str] = {}
        for a, b, sim in self.pairs:
            first, copy = sorted((a, b), key=lambda i: (order[self.ds.samples[i].split], i))
            kind = "leak" if self.ds.samples[a].split != self.ds.samples[b].split else "duplicate"
            out.setdefault(copy, f"{kind} of {self.ds.samples[first].path} (similarity {sim:.3f})")
        classes = self.ds.classes
        for i, suggested, p in self.label_issues:
            out.setdefault(i, f"label: looks like {classes[suggested]} (p of its label {p:.2f})")
        for i, sim in self.outliers:
            out.setdefault(i, f"outlier: far from every class (similarity {sim:.3f})")
        for i, std in self.blank:
            out.setdefault(i, f"near-blank (pixel std {std:.1f})")
        return out

    def to_dict(self) -> dict:
        s = self.ds.samples
        photo = lambda i: {"path": str(s[i].path), "split": s[i].split, "label": self.ds.label_name(s[i].label)}
        pair = lambda a, b, sim, pixels: {
            "a": photo(a),
            "b": photo(b),
            "similarity": round(sim, 4),
            "thumbnail_similarity": round(pixels, 4),
            "leak": s[a].split != s[b].split,
        }
        return {
            **self.about,
            "seconds": self.seconds,
            "counts": {
                "exact_duplicate_groups": len(self.exact),
                "near_duplicate_pairs": len(self.near),
                "leaks": len(self.leaks),
                "label_issues": len(self.label_issues),
                "outliers": len(self.outliers),
                "near_blank": len(self.blank),
                "suspects": len(self.suspects()),
            },
            "near_duplicates": self.calibration,
            "exact_duplicates": [[photo(i) for i in g] for g in self.exact],
            "near_duplicate_pairs": [pair(*p) for p in self.near],
            "label_issues": [
                {**photo(i), "suggested": self.ds.classes[c], "probability_of_label": round(p, 4)}
                for i, c, p in self.label_issues
            ],
            "outliers": [{**photo(i), "similarity": round(v, 4)} for i, v in self.outliers],
            "near_blank": [{**photo(i), "pixel_std": round(v, 2)} for i, v in self.blank],
        }


def audit(
    data: str | os.PathLike | Dataset,
    backbone: str = "efficientnet_lite0",
    weights: str = "default",
    input_size: int | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    threshold: float | None = None,
    folds: int = S.FOLDS,
    layout: str | None = None,
    seed: int = 0,
    engine: str = "auto",
    progress: bool = False,
) -> Audit:
    """Audit ``data`` (a folder, manifest, ``demo`` or a loaded ``Dataset``) with ``backbone``'s frozen features at
    ``input_size``, and write the findings to ``out_dir`` (module docstring). ``threshold``: the cosine similarity
    from which two photos' features make them near-duplicate candidates (default: calibrated on copies)."""
    started = time.perf_counter()
    ds = data if isinstance(data, Dataset) else load_dataset(data, layout, seed=seed)
    if ds.stream is not None:
        raise DataError(
            f"{ds.root} is prepared data (shards at the input size); the audit reads the original photos (it "
            "calibrates on copies cut from them). Audit the image files, then prepare them: headstart audit SOURCE."
        )
    out_dir = check_writable_dir(Path(out_dir or default_out(ds)), "The audit folder (--out)")
    options = {"data": str(ds.root), "backbone": backbone, "weights": weights, "input_size": input_size, "seed": seed}
    cfg = as_trained(resolve_config(None, None, {**options, "strategy": "features", "engine": engine}))
    model, _ = build_model(cfg, ds.num_classes)
    ds, store = decoded_images(ds, model.preprocessing, progress=progress)
    features, mirrored, order = _features(cfg, model, ds, store, progress)
    found = Audit(ds, out_dir=out_dir)
    found.seconds["features"] = round(time.perf_counter() - started, 2)
    labels = None if ds.multi_label else np.array([ds.samples[i].label for i in order])
    paths = [s.path for s in ds.samples]

    t = time.perf_counter()
    hashes, stds, thumbs = D.pixel_summary(store, order)
    found.exact = D.exact_groups(hashes, paths, order)
    symmetric = D.symmetric(features, mirrored)
    chosen, copies, copy_thumbs = _copies(model, ds, store, order, seed)
    found.calibration = D.calibrate(symmetric[chosen], copies, thumbs[chosen], copy_thumbs)
    if threshold is not None:
        found.calibration["feature_threshold"] = threshold
    at = {i: n for n, i in enumerate(order)}
    same = {tuple(sorted((at[a], at[b]))) for g in found.exact for a in g for b in g if a != b}
    found.near = [(order[a], order[b], f, p) for a, b, f, p in D.near_pairs(symmetric, thumbs, found.calibration, same)]
    found.seconds["duplicates"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    if labels is not None:
        _judge_labels(found, features, labels, order, folds, seed)
    else:  # several classes an image: the label check and the class centres judge one
        log.warning("multi-label data: labels and outliers are not judged (each check takes one class an image)")
    found.blank = [(order[i], float(stds[i])) for i in np.flatnonzero(stds < S.BLANK_STD)]
    found.seconds["suspects"] = round(time.perf_counter() - t, 2)
    found.seconds["after_features"] = round(found.seconds["duplicates"] + found.seconds["suspects"], 2)
    found.about = {
        "data": str(ds.root),
        "layout": ds.layout,
        "images": len(order),
        "classes": ds.classes,
        "backbone": backbone,
        "input_size": model.preprocessing.input_size,
        "folds": folds,
    }
    write(found, store)
    return found


def find_audit(root: str | os.PathLike, folders: list[Path]) -> tuple[Path, dict] | None:
    """The newest audit of the data at ``root`` in one of ``folders`` (``<folder>/<audit>/audit.json``), and what
    it found; None where there is none. A file that is not an audit's is passed over."""
    found = []
    for folder in folders:
        for f in Path(folder).glob(f"*/{AUDIT_JSON}"):
            try:
                a = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(a, dict) and a.get("data") == str(root) and isinstance(a.get("counts"), dict):
                found.append((f.stat().st_mtime, f.parent / AUDIT_HTML, a))
    return max(found, key=lambda x: x[0])[1:] if found else None


def default_out(ds: Dataset) -> Path:
    return Path("runs") / f"audit-{'demo' if ds.root == demo_root() else ds.root.name}"


def _features(cfg, model, ds: Dataset, store: ImageStore, progress: bool):
    """Every photo's pooled features as the ``features`` strategy computes (and keeps) them, and its mirror
    image's as test-time augmentation does; in split order, with the sample index of each row."""
    inputs, _ = training_inputs(cfg, model, ds, store, progress)
    splits, ranks = split_indices(ds), Ranks()
    mirrored = [frozen_rows(cfg, model, store, splits[s][0], ranks, progress, s, flip=True) for s in SPLITS]
    order = [i for s in SPLITS for i in splits[s][0]]
    return torch.cat([inputs[s].tensors[0] for s in SPLITS]).float(), torch.cat(mirrored).float(), order


def _copies(model, ds: Dataset, store: ImageStore, order: list[int], seed: int):
    """``CALIBRATION_IMAGES`` rows of ``order`` (seeded); the symmetric features and the thumbnails of a copy of
    each, made from its file (``duplicates.calibration_copy``), as a user's copy would be; kept on disk like the
    frozen pass's, so a second audit decodes nothing again."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(order), min(CALIBRATION_IMAGES, len(order)), replace=False).tolist())
    picked = [order[i] for i in chosen]
    fingerprint = Engine("torch").fingerprint(model.features_module(), repr(model.preprocessing))
    key = frozen_key(store, picked, fingerprint, "torch", torch.float32, f"audit-copies|{D.THUMBNAIL}px")
    kept = load_frozen(key)
    width = D.THUMBNAIL**2
    if kept is None or tuple(kept[0].shape) != (len(picked), model.num_features + width):
        pre = model.preprocessing
        pixels = [pre.resize_image(D.calibration_copy(decode_image(ds.samples[i].path, MAX_PIXELS)[0])) for i in picked]
        copies = ImageStore(np.stack([np.asarray(p, np.uint8) for p in pixels]), np.arange(len(picked)))
        rows = [extract_features(model, copies, list(range(len(picked))), flip=flip) for flip in (False, True)]
        kept = (torch.cat([D.symmetric(*rows), D.pixel_summary(copies, list(range(len(picked))))[2]], 1), {})
        save_frozen(key, kept[0], {"engine": "torch"})
    return chosen, kept[0][:, :-width], kept[0][:, -width:]


def write(found: Audit, store: ImageStore) -> None:
    """audit.json, suspects.csv and audit.html in ``found.out_dir``."""
    out = found.out_dir
    data = found.to_dict()
    write_text(out / AUDIT_JSON, json.dumps(data, indent=2))
    s, suspects = found.ds.samples, found.suspects()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    writer.writerows([str(s[i].path), found.ds.label_name(s[i].label), s[i].split] for i in suspects)
    write_text(out / SUSPECTS_CSV, buffer.getvalue())
    thumbs: dict[int, str] = {}

    def thumb(i: int) -> str:
        if i not in thumbs:
            png = io.BytesIO()
            Image.fromarray(np.asarray(store[i])).resize((112, 112)).save(png, format="PNG")
            thumbs[i] = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
        return thumbs[i]

    photo = lambda i: {
        "src": thumb(i),
        "path": str(s[i].path),
        "split": s[i].split,
        "label": found.ds.label_name(s[i].label),
    }
    html = render(
        "audit.html.j2",
        title=f"Audit of {found.ds.root.name}",
        subtitle=f"{data['images']:,} images · {len(found.ds.classes)} classes · {data['backbone']} features at "
        f"{data['input_size']} px",
        a=data,
        shown=SHOWN,
        leaks=[(photo(a), photo(b), sim) for a, b, sim in found.leaks[:SHOWN]],
        duplicates=[(photo(a), photo(b), sim) for a, b, sim in found.pairs if s[a].split == s[b].split][:SHOWN],
        labels=[(photo(i), found.ds.classes[c], p) for i, c, p in found.label_issues[:SHOWN]],
        outliers=[(photo(i), v) for i, v in found.outliers[:SHOWN]],
        blank=[(photo(i), v) for i, v in found.blank[:SHOWN]],
    )
    write_text(out / AUDIT_HTML, html)


def _judge_labels(found: Audit, features, labels: np.ndarray, order: list[int], folds: int, seed: int) -> None:
    """Likely label mistakes (each photo judged by a classifier of the others) and outliers, into ``found``."""
    present, given, counts = np.unique(labels, return_inverse=True, return_counts=True)  # a class may have no image
    if counts.min() >= 2:
        probs = S.out_of_fold_probabilities(features, given, folds, seed)
        found.label_issues = [
            (order[i], int(present[probs[i].argmax()]), float(probs[i, given[i]])) for i in S.label_issues(given, probs)
        ]
    else:  # a photo cannot be judged by the others of its class when it has none
        few = found.ds.classes[int(present[counts.argmin()])]
        log.warning("labels not checked: class %r has %d image, and each needs 2 or more", few, counts.min())
    found.outliers = [(order[i], v) for i, v in S.outliers(features, labels)]
