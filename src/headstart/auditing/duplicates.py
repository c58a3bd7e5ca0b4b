"""Duplicates: the same photo twice, within a split or across splits (a copy of a training photo in
validation or evaluation is a leak: the model is scored on what it learnt).

- exact: the same decoded pixels. Hashed from the decode-once cache (no image decoded again), then each
  group that matches there is confirmed on the full-size pixels of its few files;
- near: two tests, both calibrated on copies made as copies are made (``calibration_copy``: resized to 80 %,
  re-encoded as JPEG, mirrored) from photos of the data itself. Their pooled features (the photo's and its
  mirror image's, ``symmetric``) must be at least as alike as the least alike copy, less ``FEATURE_MARGIN``;
  found in blocks of rows, so memory stays bounded whatever the number of images. Then their thumbnails
  (``THUMBNAIL`` px grey, either way round) must correlate as the copies' do. Features alone, set to find
  every copy, also flag photos that are merely alike (two tulip beds); the thumbnails tell those apart
  (docs/benchmarks.md, "Audit").
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
THUMBNAIL = 16  # px a side of the grey thumbnails near duplicates are confirmed on
FEATURE_MARGIN = 0.1  # below the least alike copy's feature similarity: features find, thumbnails decide
PIXEL_MARGIN = 0.02  # below the least alike copy's thumbnail correlation
# Never below these: copies of small photos (Fashion-MNIST's 28 px, resized to 22 px and re-encoded) change
# so much that thresholds set by them would call most pairs of one class duplicates.
FEATURE_FLOOR, PIXEL_FLOOR = 0.8, 0.9
STRIDE = 4  # exact duplicates are looked for on every 4th pixel each way, then confirmed on every pixel


def unit(v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(v.float(), dim=-1)


def symmetric(features: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """A photo's features and its mirror image's as one unit vector: the same for a photo and its mirrored copy
    (a CNN's pooled features are not: mirrored copies of Fashion-MNIST items fell to 0.81 cosine similarity,
    below pairs of different items; with this, 0.89)."""
    return unit(unit(features) + unit(mirrored))


def pixel_summary(store, indices: list[int]) -> tuple[list[bytes], np.ndarray, torch.Tensor]:
    """One read of the decoded cache for what the audit asks of the pixels: a hash of every ``STRIDE``-th pixel
    (exact-duplicate candidates), the grey pixels' standard deviation (near-blank), and the grey thumbnail as a
    unit vector (area averages: a mirrored photo's is, within a pixel's shift, the mirror image of the photo's)."""
    hashes, stds, thumbs = [], [], []
    # From 128 px, every second pixel each way still gives each thumbnail cell 16 of them, for a quarter of the work.
    step = 2 if len(indices) and np.asarray(store[indices[0]]).shape[0] >= 8 * THUMBNAIL else 1
    for start in range(0, len(indices), 256):
        batch = np.stack([np.asarray(store[i])[::step, ::step] for i in indices[start : start + 256]])
        hashes += [
            hashlib.blake2b(b[:: STRIDE // step, :: STRIDE // step].tobytes(), digest_size=16).digest() for b in batch
        ]
        grey = torch.from_numpy(batch).float().mean(3)  # (N, h, w)
        stds.append(grey.flatten(1).std(1).numpy())
        small = torch.nn.functional.adaptive_avg_pool2d(grey.unsqueeze(1), THUMBNAIL).flatten(1)
        thumbs.append(unit(small - small.mean(1, keepdim=True)))
    return hashes, np.concatenate(stds), torch.cat(thumbs)


def exact_groups(hashes: list[bytes], paths: list, indices: list[int]) -> list[list[int]]:
    """Groups (2 or more) of ``indices`` whose images have the same decoded pixels, largest first: those alike in
    ``hashes`` (``pixel_summary``) confirmed on their full-size pixels."""
    candidates = defaultdict(list)
    for i, h in zip(indices, hashes):
        candidates[h].append(i)
    groups = []
    for group in (g for g in candidates.values() if len(g) > 1):
        full = defaultdict(list)
        for i in group:
            pixels = np.asarray(decode_image(paths[i], MAX_PIXELS)[0])
            full[hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(), digest_size=16).digest()].append(i)
        groups += [sorted(g) for g in full.values() if len(g) > 1]
    return sorted(groups, key=len, reverse=True)


def thumbnail_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Correlation of grey thumbnails (rows of unit vectors), either way round: the larger of ``b``'s and its
    mirror image's."""
    mirrored = b.view(len(b), THUMBNAIL, THUMBNAIL).flip(-1).reshape(len(b), -1)
    return torch.maximum((a * b).sum(1), (a * mirrored).sum(1))


def similar_pairs(features: torch.Tensor, threshold: float, exclude: set | None = None) -> list[tuple[int, int, float]]:
    """(i, j, similarity), i < j, for every pair of rows of ``features`` at least ``threshold`` alike (cosine),
    most alike first; pairs in ``exclude`` (exact duplicates, said already) left out."""
    x = unit(features)
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


def near_pairs(
    features: torch.Tensor, thumbs: torch.Tensor, calibration: dict, exclude: set | None = None
) -> list[tuple[int, int, float, float]]:
    """(i, j, feature similarity, thumbnail correlation) of the pairs that pass both of ``calibration``'s tests."""
    pairs = similar_pairs(features, calibration["feature_threshold"], exclude)
    if not pairs:
        return []
    a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    pixels = thumbnail_similarity(thumbs[a], thumbs[b]).tolist()
    return [(i, j, s, p) for (i, j, s), p in zip(pairs, pixels) if p >= calibration["pixel_threshold"]]


def calibration_copy(photo: Image.Image, quality: int = 75, scale: float = 0.8) -> Image.Image:
    """A copy of a photo as copies are made: resized to ``scale``, re-encoded as JPEG, mirrored."""
    small = photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.BILINEAR)
    buffer = io.BytesIO()
    small.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return ImageOps.mirror(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def calibrate(originals: torch.Tensor, copies: torch.Tensor, thumbs: torch.Tensor, copy_thumbs: torch.Tensor) -> dict:
    """Both tests' thresholds from photos and their copies (``symmetric`` features, ``pixel_summary`` thumbnails):
    each the least alike copy's similarity, less its margin, and never under its floor."""
    features = (unit(originals) * unit(copies)).sum(1)
    pixels = thumbnail_similarity(thumbs, copy_thumbs)
    return {
        "feature_threshold": round(max(FEATURE_FLOOR, float(features.min()) - FEATURE_MARGIN), 4),
        "pixel_threshold": round(max(PIXEL_FLOOR, float(pixels.min()) - PIXEL_MARGIN), 4),
        "copies": len(features),
        "copy_feature_similarity": {
            "min": round(float(features.min()), 4),
            "median": round(float(features.median()), 4),
        },
        "copy_pixel_similarity": {"min": round(float(pixels.min()), 4), "median": round(float(pixels.median()), 4)},
    }
