"""Decoded images as training reads them: float tensors in [0, 1] from the decode-once cache,
augmented (the default recipe's random resized crop and flip) with a seed of their own per image and epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from headstart.data.cache import ImageStore
from headstart.data.samplers import seed_of


class ImageSet(torch.utils.data.Dataset):
    """Decoded images from the cache as float tensors in [0, 1], augmented for training.

    The augmentation of image i in epoch e draws from its own seed (seed, e, i), so a resumed
    run augments exactly as an uninterrupted one, whatever else used the random generator.
    ``flip``: every image mirrored (test-time augmentation's second view). ``keys``: the number each
    image's augmentation is seeded by, when not its place in ``indices`` (a rank's share of a split
    augments as the whole split would: ``headstart.training.augmented_views``).
    """

    def __init__(
        self,
        store: ImageStore,
        indices: list[int],
        labels: list[int],
        augment: bool,
        seed: int = 0,
        flip: bool = False,
        keys: Sequence[int] | None = None,
    ):
        self.store, self.indices, self.labels, self.seed, self.epoch = store, indices, labels, seed, 0
        self.flip, self.keys = flip, keys
        self.transform = None
        if augment:
            from torchvision.transforms import v2

            size = store.array.shape[1]
            # Light augmentation: the default recipe's random resized crop and horizontal flip.
            self.transform = v2.Compose(
                [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()]
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.store[self.indices[i]])).permute(2, 0, 1)  # uint8 CHW
        if self.flip:
            x = x.flip(-1)
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_of(self.seed, self.epoch, i if self.keys is None else self.keys[i]))
                x = self.transform(x)
        return x.float().div_(255), self.labels[i]
