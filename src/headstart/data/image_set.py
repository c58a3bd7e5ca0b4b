"""Decoded images as training reads them: float tensors in [0, 1] from the decode-once cache (``ImageSet``) or
streamed from prepared shards (``streamed_images``), augmented (the default recipe's random resized crop and
flip) with a seed of their own per image and epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from headstart.data.cache import ImageStore
from headstart.data.samplers import seed_of
from headstart.data.shards import Shards, quiet_litdata


def augmentation(size: int):
    """Light augmentation: the default recipe's random resized crop and horizontal flip."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()])


def as_input(pixels: np.ndarray, transform=None, seed: int = 0, flip: bool = False) -> torch.Tensor:
    """(size, size, 3) uint8 pixels as a (3, size, size) float tensor in [0, 1]: mirrored (``flip``), and augmented
    by ``transform`` drawing from ``seed`` alone."""
    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1)  # uint8 CHW (a copy: a memory map is read-only)
    if flip:
        x = x.flip(-1)
    if transform is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = transform(x)
    return x.float().div_(255)


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
        self.transform = augmentation(store.size) if augment else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        seed = seed_of(self.seed, self.epoch, i if self.keys is None else self.keys[i])
        return as_input(self.store[self.indices[i]], self.transform, seed, self.flip), self.labels[i]


def streamed_images(shards: Shards, split: str, augment: bool, seed: int, num_classes: int, drop_last: bool):
    """A split of prepared shards as training reads it, streamed by LitData (``StreamingDataset``): each rank its
    share, in an order reshuffled every epoch from ``seed``, augmented as ``ImageSet`` augments (image i of the
    split in epoch e from its own seed), targets as ``headstart.data.dataset.split_indices`` gives them. Its
    ``StreamingDataLoader`` saves where it is in an epoch, so a run resumes mid-epoch."""
    quiet_litdata()
    # batch_decode off: LitData's default decodes a window of items around each one read, which a shuffled
    # order mostly throws away (62 items decoded a kept one: 2.5-3x slower; docs/benchmarks.md)
    images = _streamed_class()(
        **shards.stream_options(split), shuffle=True, seed=seed, drop_last=drop_last, batch_decode=False
    )
    images.augment = augmentation(shards.preprocessing.input_size) if augment else None
    images.image_seed, images.num_classes, images.multi = seed, num_classes, shards.meta["task"] == "multi"
    return images


def _streamed_class() -> type:
    """``StreamedImages``, made when first asked for: LitData takes seconds to import, and only streams need it."""
    if "StreamedImages" not in globals():
        from litdata import StreamingDataset

        class StreamedImages(StreamingDataset):
            def __getitem__(self, index):
                item = super().__getitem__(index)
                epoch = max(self.current_epoch - 1, 0)  # LitData counts epochs from 1
                x = as_input(item["image"], self.augment, seed_of(self.image_seed, epoch, int(item["index"])))
                if self.multi:
                    y = torch.zeros(self.num_classes)
                    y[torch.as_tensor(item["label"])] = 1.0
                    return x, y
                return x, int(item["label"])

        StreamedImages.__module__, StreamedImages.__qualname__ = __name__, "StreamedImages"
        globals()["StreamedImages"] = StreamedImages
    return globals()["StreamedImages"]


def __getattr__(name: str):  # pickle finds StreamedImages here in a DataLoader worker
    if name == "StreamedImages":
        return _streamed_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
