"""The order training reads its images in: seeded per epoch (a resumed run draws the same), balanced
by class when asked, and each global batch shared among the processes.

- ``EpochSampler``: a permutation per epoch from (seed, epoch), or a balanced draw with replacement;
- ``RankBatches``: the global batches of that order, each rank taking its share;
- ``balanced_draw_weights``: ``1 / n_c`` an image, so every class is equally likely.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import BatchSampler, Sampler


def seed_of(*parts: int) -> int:
    return hash(parts) % (2**31)  # hash of a tuple of ints is stable across runs


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a resumed run sees the same order, and every
    rank the same one. It also tells the dataset the epoch (Lightning calls ``set_epoch`` before
    the epoch's first batch). A dataset with a ``pick`` method (``headstart.training.augmented_views.ViewSet``) turns
    the order into the samples to read this epoch, here, in the main process: every rank agrees.

    With ``labels`` (one a sample) it is balanced instead: each epoch draws ``len(dataset)``
    samples with replacement, every class equally likely (``sampler="balanced"``)."""

    def __init__(self, dataset, seed: int, labels: Sequence[int] | None = None):
        self.dataset, self.n, self.seed, self.epoch = dataset, len(dataset), seed, 0
        assert labels is None or len(labels) == self.n, "one label a sample"
        self.weights = balanced_draw_weights(labels) if labels is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(seed_of(self.seed, self.epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(self.n, generator=g).tolist()
        pick = getattr(self.dataset, "pick", None)
        return iter(pick(order, self.epoch) if pick else order)


class RankBatches(BatchSampler):
    """The batches of ``sampler``'s order, each global batch of ``batch_size`` shared among the
    ranks (rank r takes every world-th sample of it): one step on N devices sees the samples that
    one device would, so a recipe means the same on 1 or 8. Lightning calls ``set_epoch`` on
    ``self.sampler``."""

    def __init__(self, sampler: Sampler[int], batch_size: int, rank: int = 0, world: int = 1):
        super().__init__(sampler, batch_size, drop_last=False)
        self.rank, self.world = rank, world

    def __iter__(self):
        for batch in super().__iter__():
            if len(batch) < self.world:  # a last batch smaller than the ranks: every rank needs a sample
                batch = (batch * self.world)[: self.world]
            yield batch[self.rank :: self.world]


def balanced_draw_weights(labels: Sequence[int]) -> torch.Tensor:
    """One weight a sample, ``1 / n_c`` of its class: drawn by them, every class is equally likely."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    return 1.0 / torch.bincount(y).double()[y]
