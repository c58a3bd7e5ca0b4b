"""Small datasets made of real photos (scikit-image's), in every layout; the tiny fixture's sizes."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FOOD11 = ("training", "validation", "evaluation")


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]


PHOTOS = _photos()


def photo(i: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A real photo, different for every ``i``: a shifted crop of one of scikit-image's photos."""
    arr = PHOTOS[i % len(PHOTOS)]
    h, w = arr.shape[:2]
    step = i // len(PHOTOS)
    top, left = (17 * step) % (h // 3), (29 * step) % (w // 3)
    crop = arr[top : top + 2 * h // 3, left : left + 2 * w // 3]
    return Image.fromarray(crop).resize(size)


def make_food11(root: Path, per_split: dict[str, list[int]] | None = None, ext: str = ".jpg") -> Path:
    """A food11-layout dataset: ``per_split[split][c]`` images of class c, named <c>_<n><ext>."""
    per_split = per_split or {"training": [4, 4, 4], "validation": [2, 2, 2], "evaluation": [2, 2, 2]}
    n = 0
    for split, counts in per_split.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for label, count in enumerate(counts):
            for _ in range(count):
                photo(n).save(root / split / f"{label}_{n}{ext}")
                n += 1
    return root


def make_messy_food11(root: Path) -> Path:
    """The issue's example: one corrupt JPEG, one CMYK JPEG, one RGBA PNG and a notes.txt.

    Usable images: training [4, 4, 5], validation [3, 2, 2], evaluation [2, 2, 2].
    """
    make_food11(root)
    (root / "classes.txt").write_text("Bread\nDairy\nDessert\n")
    (root / "training" / "1_90.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    photo(91).convert("CMYK").save(root / "training" / "2_91.jpg")
    rgba = photo(92).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "validation" / "0_92.png")
    (root / "training" / "notes.txt").write_text("collected in 2026\n")
    return root


def food11_to_folders(src: Path, dst: Path) -> Path:
    """The same files in the folders layout: <split>/<class name>/<file>, classes.txt kept."""
    names = (src / "classes.txt").read_text().split()
    for split in FOOD11:
        for f in sorted((src / split).iterdir()):
            label = int(f.name.split("_")[0]) if f.name[0].isdigit() else 0
            (dst / split / names[label]).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst / split / names[label] / f.name)
    shutil.copy(src / "classes.txt", dst / "classes.txt")
    return dst


def food11_to_csv(src: Path, manifest: Path) -> Path:
    """The same files listed in a manifest (path,label name,split), paths relative to it."""
    names = (src / "classes.txt").read_text().split()
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for split in FOOD11:
            for p in sorted((src / split).iterdir()):
                label = int(p.name.split("_")[0]) if p.name[0].isdigit() else 0
                w.writerow([os.path.relpath(p, manifest.parent), names[label], split])
    return manifest


def count_stem_images(monkeypatch) -> list[int]:
    """A list that grows by the batch size each time a frozen prefix's stem runs (efficientnet_lite0):
    how many images went through the frozen layers."""
    from headstart.models import factory as backbones

    seen: list[int] = []
    split = backbones.Classifier.split

    def counting_split(self, k):
        cut = split(self, k)
        if cut is not None:
            self.body.net.conv_stem.register_forward_hook(lambda mod, inp, out: seen.append(len(out)))
        return cut

    monkeypatch.setattr(backbones.Classifier, "split", counting_split)
    return seen


# The tiny fixture for mechanics (resume, modes, caches, layouts of memory): 3 classes, 8
# training images each, at 32 px. Fast; not meant to be learnt (accuracy belongs in bench/).
TINY = {"training": [8, 8, 8], "validation": [3, 3, 3], "evaluation": [3, 3, 3]}
TINY_IMAGES = sum(sum(c) for c in TINY.values())
TINY_OPTIONS = dict(input_size=32, batch_size=8)


def make_corner_patch(root: Path, per_class: int = 24, size: int = 64) -> Path:
    """Two classes told apart only by the colour of a patch in the top-left corner (red or blue); the rest of
    each image is grey noise, different every time: a model can only look at that corner."""
    rng = np.random.default_rng(0)
    patch = size // 4
    for label, colour in (("red", (230, 30, 30)), ("blue", (30, 30, 230))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.repeat(rng.integers(0, 256, (size, size, 1), dtype=np.uint8), 3, axis=2)
            pixels[2 : 2 + patch, 2 : 2 + patch] = colour
            Image.fromarray(pixels).save(root / label / f"{label}_{i}.png")
    return root


# The multi-label fixture's classes: each fills a quarter of a real photo with its colour (the fourth quarter
# stays photo): an image has one to three of them, learnt from frozen features in a few epochs.
MULTI_COLOURS = {"red": ((230, 30, 30), (0, 0)), "green": ((30, 200, 30), (0, 1)), "blue": ((30, 30, 230), (1, 0))}


def make_multilabel(root: Path, n: int = 60, size: int = 64, splits: bool = False) -> Path:
    """A multi-label dataset: ``n`` real photos with one to three coloured quarters (``MULTI_COLOURS``), listed in
    ``root/manifest.csv`` as ``path,labels[,split]`` with ``|`` between labels (``splits``: a split column, 60/20/20;
    else the splits are drawn). Returns the manifest."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    names, half = list(MULTI_COLOURS), size // 2
    rows = ["path,labels" + (",split" if splits else "")]
    for i in range(n):
        k = 1 + i % 3  # 1, 2, 3 labels in turn
        chosen = sorted(rng.choice(len(names), k, replace=False))
        pixels = np.asarray(photo(i, (size, size)).convert("RGB")).copy()
        for c in chosen:
            colour, (row, col) = MULTI_COLOURS[names[c]]
            pixels[row * half : (row + 1) * half, col * half : (col + 1) * half] = colour
        Image.fromarray(pixels).save(root / f"img_{i}.jpg", quality=95)
        split = ("training", "training", "training", "validation", "evaluation")[i % 5]
        rows.append(f"img_{i}.jpg," + "|".join(names[c] for c in chosen) + (f",{split}" if splits else ""))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"
