"""Splits of multi-label data that keep every label's share: iterative stratification (Sechidis, Tsoumakas and
Vlahavas, "On the stratification of multi-label data", ECML PKDD 2011, algorithm 1).

A single-label split is stratified class by class; an image of several classes cannot be, so the images are
dealt out label by label, the rarest label first: each image of that label goes to the subset that still wants
the most of it (ties: the subset that wants the most images, then a seeded draw). The package that implements it
on PyPI (iterative-stratification) installs a top-level ``tests`` package into site-packages, which hides any
project's own ``tests``: written here instead, in a few lines.

>>> iterative_stratification(labels, [0.6, 0.2, 0.2], np.random.default_rng(0))   # doctest: +SKIP
array([0, 2, 0, 1, ...])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iterative_stratification(labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """For (N, C) rows of 0 and 1, the subset (0 .. len(fractions) - 1) of each row: subset s gets about
    ``fractions[s]`` of the rows and of each label's rows."""
    y = np.asarray(labels, dtype=bool)
    n = len(y)
    share = np.asarray(fractions, dtype=np.float64) / np.sum(fractions)
    wanted_rows = share * n  # how many rows each subset still wants
    wanted = np.outer(share, y.sum(0))  # (subsets, labels): how many of each label's rows
    subset = np.full(n, -1)
    order = rng.permutation(n)  # the order rows are dealt in, and so every tie, is seeded
    left = y.copy()  # labels of the rows not dealt yet
    while left.any():
        counts = left.sum(0)
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))  # the rarest label left
        for row in order[left[order, label]]:
            candidates = np.flatnonzero(wanted[:, label] == wanted[:, label].max())
            if len(candidates) > 1:
                candidates = candidates[wanted_rows[candidates] == wanted_rows[candidates].max()]
            s = int(candidates[0] if len(candidates) == 1 else rng.choice(candidates))
            subset[row] = s
            wanted_rows[s] -= 1
            wanted[s, y[row]] -= 1
            left[row] = False
    for row in order[subset[order] < 0]:  # rows without a label: where the most rows are still wanted
        s = int(np.argmax(wanted_rows))
        subset[row] = s
        wanted_rows[s] -= 1
    return subset
