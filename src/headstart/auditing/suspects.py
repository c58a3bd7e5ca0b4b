"""Photos that are likely wrong: a label that the other photos contradict, a photo far from every class,
a near-blank image.

- label mistakes: out-of-fold probabilities (each photo predicted by a classifier fitted on the other
  folds of the frozen features: a logistic regression, as the ``features`` strategy's head is, without
  ever seeing the photo), ranked by cleanlab's ``find_label_issues`` (confident learning), each with the
  label its photo looks like;
- outliers: a photo whose features are far from the centre of every class, by a robust rule (below the
  median similarity by ``OUTLIER_MADS`` median absolute deviations);
- near-blank: a photo of almost one colour (its grey pixels' standard deviation under ``BLANK_STD``, read with
  the thumbnails: ``headstart.auditing.duplicates.pixel_summary``).
"""

from __future__ import annotations

import numpy as np
import torch

FOLDS = 5
COMPONENTS = 64
OUTLIER_MADS = 5.0
BLANK_STD = 4.0  # of 255: a flat colour with JPEG noise


def out_of_fold_probabilities(features: torch.Tensor, labels: np.ndarray, folds: int = FOLDS, seed: int = 0):
    """(N, classes) probabilities of each photo from a classifier fitted on the other ``folds - 1`` folds."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    # The first components only: a fit in a fraction of the time (on the demo at 64 px, 64 of the 1,280 gave
    # 82.2 % out-of-fold accuracy against 83.0 %, in 0.5 s instead of 7.7 s).
    x = PCA(min(COMPONENTS, *x.shape), random_state=seed).fit_transform(x)
    smallest = np.bincount(labels).min()
    folds = int(min(folds, smallest))
    model = LogisticRegression(C=10.0, max_iter=300)
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(model, x, labels, cv=splits, method="predict_proba")


def label_issues(labels: np.ndarray, probs: np.ndarray) -> list[int]:
    """The photos whose label is likely wrong, most likely first (cleanlab's confident learning)."""
    from cleanlab.filter import find_label_issues

    return [int(i) for i in find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")]


def outliers(features: torch.Tensor, labels: np.ndarray) -> list[tuple[int, float]]:
    """(index, similarity to the nearest class centre) of photos far from every class, farthest first."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    centres = torch.stack([x[torch.from_numpy(labels == c)].mean(0) for c in np.unique(labels)])
    nearest = (x @ torch.nn.functional.normalize(centres, dim=1).T).max(1).values.numpy()
    median = np.median(nearest)
    mad = np.median(np.abs(nearest - median)) or 1e-6
    far = np.flatnonzero(nearest < median - OUTLIER_MADS * mad)
    return [(int(i), float(nearest[i])) for i in far[np.argsort(nearest[far])]]
