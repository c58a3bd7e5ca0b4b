"""Duplicates: the same photo twice, within a split or across splits (a copy of a training photo in
validation or evaluation is a leak: the model is scored on what it learnt).

- exact: the same decoded pixels. Hashed from the decode-once cache (no image decoded again), then each
  group that matches there is confirmed on the full-size pixels of its few files;
- near: pooled features whose cosine similarity is at least a threshold, found in blocks of rows (memory
  bounded whatever the number of images); the threshold is calibrated on copies made as copies are made
  (``calibration_copy``: re-encoded as JPEG, resized to 80 %, mirrored), so it is the backbone's own.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict

import numpy as np
import torch
from PIL import Image, ImageOps

from headstart.data.images import MAX_PIXELS, decode_image

BLOCK_BYTES = 256 * 2**20  # the similarity rows computed at once: memory stays bounded for any number of images
COPY_QUANTILE = 0.02  # the threshold: 98 % of the calibration copies are found


def exact_groups(store, paths: list, indices: list[int]) -> list[list[int]]:
    """Groups (2 or more) of ``indices`` whose images have the same decoded pixels, largest first."""
    cached = defaultdict(list)
    for i in indices:
        cached[hashlib.blake2b(np.ascontiguousarray(store[i]).tobytes(), digest_size=16).digest()].append(i)
    groups = []
    for candidates in (g for g in cached.values() if len(g) > 1):  # same at the input size: confirm at full size
        full = defaultdict(list)
        for i in candidates:
            pixels = np.asarray(decode_image(paths[i], MAX_PIXELS)[0])
            full[hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).digest()].append(i)
        groups += [g for g in full.values() if len(g) > 1]
    return sorted(groups, key=len, reverse=True)


def similar_pairs(features: torch.Tensor, threshold: float, exclude: set | None = None) -> list[tuple[int, int, float]]:
    """(i, j, similarity), i < j, for every pair of rows of ``features`` at least ``threshold`` alike (cosine),
    most alike first; pairs in ``exclude`` (exact duplicates, said already) left out."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    n, found = len(x), []
    block = max(1, BLOCK_BYTES // (4 * max(n, 1)))
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T
        rows = torch.arange(start, min(start + block, n)).unsqueeze(1)
        sims.masked_fill_(torch.arange(n).unsqueeze(0) <= rows, -2)  # each pair once, never an image with itself
        i, j = torch.nonzero(sims >= threshold, as_tuple=True)
        found += [(start + a, b, float(sims[a, b])) for a, b in zip(i.tolist(), j.tolist())]
    exclude = exclude or set()
    return sorted((p for p in found if (p[0], p[1]) not in exclude), key=lambda p: -p[2])


def calibration_copy(pixels: np.ndarray, size: int, quality: int = 75, scale: float = 0.8) -> np.ndarray:
    """A copy of an image as copies are made: resized to ``scale``, re-encoded as JPEG, mirrored; back at the
    model's input ``size``."""
    image = Image.fromarray(np.asarray(pixels))
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    copy = ImageOps.mirror(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return np.asarray(copy.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def symmetric(features: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """A photo's features and its mirror image's, as one unit vector: the same for a photo and its mirrored copy
    (a CNN's pooled features are not: mirrored copies of Fashion-MNIST items fell to 0.81 cosine similarity,
    below pairs of different items; with this, 0.89)."""
    unit = lambda v: torch.nn.functional.normalize(v.float(), dim=1)
    return unit(unit(features) + unit(mirrored))


def calibrate(originals: torch.Tensor, copies: torch.Tensor, features: torch.Tensor) -> dict:
    """The near-duplicate threshold: the similarity that ``1 - COPY_QUANTILE`` of the copies reach with their
    originals; with how many pairs of other images reach it (a sample), so a reader sees the margin."""
    a = torch.nn.functional.normalize(originals.float(), dim=1)
    b = torch.nn.functional.normalize(copies.float(), dim=1)
    copy_sims = (a * b).sum(1)
    threshold = float(torch.quantile(copy_sims, COPY_QUANTILE))
    x = torch.nn.functional.normalize(features.float(), dim=1)
    sample = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:2000]]
    others = sample @ sample.T
    others = others[~torch.eye(len(sample), dtype=torch.bool)]
    return {
        "threshold": round(threshold, 4),
        "copies": len(copy_sims),
        "copy_similarity": {q: round(float(torch.quantile(copy_sims, v)), 4) for q, v in (("min", 0), ("median", 0.5))},
        "other_pairs_above": round(float((others >= threshold).float().mean()), 6) if len(others) else 0.0,
        "other_similarity_max": round(float(others.max()), 4) if len(others) else None,
    }
