"""Augmented views, computed once: augmentation for ``features`` and for the frozen prefix of
``partial``/``half`` without running frozen layers every epoch.

Augmentation changes a frozen layer's input every epoch, so its output cannot be cached: ``half``
with augmentation pushed every image through the frozen half in every epoch. Instead, before
training, K augmented views of every training image (the recipe's augmentation: random resized
crop and flip, exactly as ``ImageSet`` draws them in epochs 0 to K-1) go through the frozen layers
once; each epoch then reads one view per image, a different one from the epoch before.

Bounded and stated: views are stored in fp16, in memory up to ``RAM_LIMIT`` and memory-mapped from
a file under ``<cache dir>/views`` above it (deleted when the run ends); if K views would take more
than ``aug_views_budget_gb`` (or the free disk), K is lowered to fit, with a warning naming both.
The run's ``metrics.json`` records the K used (``aug_views``) and their size (``aug_views_bytes``).

>>> headstart.fit("demo", strategy="half", aug_views=4)       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from headstart.config import AUTO_MIN_VIEWS, TrainConfig, views_asked
from headstart.data.cache import ImageStore, cache_dir
from headstart.data.dataset import Dataset, split_indices
from headstart.data.samplers import seed_of
from headstart.engines.choice import Engine
from headstart.models.classifier import Classifier
from headstart.training.distributed import Ranks
from headstart.training.frozen_pass import CACHE_DTYPE, frozen_rows, leading_frozen

log = logging.getLogger(__name__)

# Views up to this size stay in memory; larger ones are memory-mapped from disk, so that memory
# stays bounded by the pages in use (as the decoded-image cache is).
RAM_LIMIT = 512 * 2**20
VIEW_DTYPE = np.float16  # as the frozen prefix's cached activations (CACHE_DTYPE): half the bytes of fp32


class ViewSet(torch.utils.data.Dataset):
    """K stored views of N training images: ``views[v, i]`` is view v of image i, with its label.

    It has N samples (an epoch is N of them), but reads sample ``v * N + i`` as view v of image i:
    ``pick`` (called by ``EpochSampler`` in the main process) says which view of each image an
    epoch reads, so the choice does not depend on worker processes or ranks.
    """

    def __init__(self, views: np.ndarray, labels: list[int], seed: int):
        self.views, self.labels = views, labels
        self.k, self.n = views.shape[:2]
        # Image i reads view (start[i] + epoch) mod K: consecutive epochs read different views, and
        # every K epochs each view once; the start differs by image so no epoch is all view 0.
        g = torch.Generator().manual_seed(seed_of(seed, self.k, self.n))
        self.start = torch.randint(self.k, (self.n,), generator=g).tolist()

    @property
    def nbytes(self) -> int:
        return int(self.views.nbytes)

    def __len__(self) -> int:
        return self.n

    def view_of(self, i: int, epoch: int) -> int:
        return (self.start[i] + epoch) % self.k

    def pick(self, order: list[int], epoch: int) -> list[int]:
        return [self.view_of(i, epoch) * self.n + i for i in order]

    def __getitem__(self, j: int):
        v, i = divmod(j, self.n)
        return torch.from_numpy(np.array(self.views[v, i])), self.labels[i]  # a copy: a memory map is read-only here


def view_inputs(
    cfg: TrainConfig,
    model: Classifier,
    ds: Dataset,
    store: ImageStore,
    progress: bool,
    ranks: Ranks,
    engine: Engine | None = None,
):
    """``frozen_pass.training_inputs`` with augmented views: validation and evaluation computed once as
    without augmentation, training as ``ViewSet``; and the trunk. None where views are off or cannot
    be used (no frozen prefix, or not one view within the budget): then ``training_inputs`` instead."""
    if not views_asked(cfg):
        return None
    if cfg.strategy == "features":
        prefix, trunk = None, nn.Identity()
    else:
        k = leading_frozen(model)
        cut = model.split(k) if k else None
        if cut is None:
            log.warning(
                "aug_views: %s freezes no layer at the bottom, so there is nothing to compute once; no views",
                cfg.strategy,
            )
            return None
        prefix, trunk = cut
    # Validation and evaluation as without views (features fp32, prefix activations fp16: what TTA's
    # mirrored pass stores too); the views in fp16 always.
    kw = {} if prefix is None else {"upto": prefix, "dtype": CACHE_DTYPE}
    splits = split_indices(ds)
    out = {
        s: TensorDataset(frozen_rows(cfg, model, store, idx, ranks, progress, s, engine=engine, **kw), torch.tensor(y))
        for s, (idx, y) in splits.items()
        if s != "training"
    }
    idx, labels = splits["training"]
    shape = out["validation"].tensors[0].shape[1:]  # one image's output: what a view of it takes
    views = _storage(cfg, len(idx), tuple(shape))
    if views is None:
        model.cpu()
        return None
    for v in range(len(views)):
        views[v] = frozen_rows(
            cfg,
            model,
            store,
            idx,
            ranks,
            progress,
            f"training, view {v + 1} of {len(views)}",
            view=v,
            engine=engine,
            upto=prefix,
            dtype=CACHE_DTYPE,
        ).numpy()
    model.cpu()
    log.info(
        "aug_views: %d views of %d training images, %.1f MB, %s",
        len(views),
        len(idx),
        views.nbytes / 2**20,
        "memory-mapped" if isinstance(views, np.memmap) else "in memory",
    )
    return {"training": ViewSet(views, labels, cfg.seed), **out}, trunk


def _storage(cfg: TrainConfig, n: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """Room for K views of ``n`` images of ``shape``: K as asked, or as many as fit the budget (and
    the free disk, for a memory map), with a warning; None (and a warning) where not one fits."""
    one = n * math.prod(shape) * np.dtype(VIEW_DTYPE).itemsize  # bytes of one view of every image
    room, why = cfg.aug_views_budget_gb * 1e9, f"the budget of {cfg.aug_views_budget_gb:g} GB (--aug-views-budget-gb)"
    asked = views_asked(cfg)
    wanted = min(asked, cfg.epochs)  # an epoch reads one view an image: more are never read
    if wanted < asked and cfg.aug_views != "auto":
        log.warning(
            "aug_views: %d views, but the run's %d epochs read %d at most: computing %d",
            asked,
            cfg.epochs,
            wanted,
            wanted,
        )
    k = min(wanted, int(room // one))
    folder = cache_dir() / "views"
    if k * one > RAM_LIMIT:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < k * one:
            room, why = free, f"the {free / 1e9:.1f} GB free in {folder}"
            k = min(k, int(room // one))
    if cfg.aug_views == "auto" and k < wanted:  # as many as fit, but not so few that each repeats too often
        if k < min(AUTO_MIN_VIEWS, wanted):
            log.warning(
                "aug_views auto: %d view(s) of the %d training images fit %s, fewer than %d: no views, "
                "augmentation reruns the frozen layers every epoch",
                k,
                n,
                why,
                AUTO_MIN_VIEWS,
            )
            return None
        log.info("aug_views auto: %d views fit %s", k, why)
    elif k < wanted:
        asked = f"aug_views: {wanted} views of the {n} training images take {wanted * one / 1e9:.2f} GB"
        if k == 0:
            log.warning(
                "%s, and one view more than %s: no views, augmentation reruns the frozen layers every epoch", asked, why
            )
            return None
        log.warning("%s, over %s: using %d views (%.2f GB) instead", asked, why, k, k * one / 1e9)
    if k * one <= RAM_LIMIT:
        return np.empty((k, n, *shape), dtype=VIEW_DTYPE)
    # An unnamed file (gone from the folder at once on POSIX, at close elsewhere): never left behind.
    return np.memmap(tempfile.TemporaryFile(dir=folder), dtype=VIEW_DTYPE, mode="w+", shape=(k, n, *shape))


def view_metrics(cfg: TrainConfig, training) -> dict:
    """What a run records of its views: the K used (0: none after all) and the bytes they take."""
    if not views_asked(cfg):
        return {}
    views = isinstance(training, ViewSet)
    return {"aug_views": training.k if views else 0, "aug_views_bytes": training.nbytes if views else 0}
