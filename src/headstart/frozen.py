"""The frozen pass: what frozen layers make of the images, computed once, and what training reads.

Frozen layers give the same output every epoch, so it is computed once, before training:

- ``features``: the pooled features of the whole frozen backbone; epochs train only the head;
- ``partial``/``half`` without augmentation: the activations of the frozen prefix (in fp16);
  epochs run only the layers after it;
- ``features``, ``partial``/``half`` with ``aug_views``: the same, on K augmented views of each
  training image (``headstart.views``); epochs read one view per image;
- otherwise (augmentation, or everything trains): the decoded images themselves (``ImageSet``).

>>> inputs, trunk = training_inputs(cfg, model, ds, store)        # doctest: +SKIP
>>> inputs["training"][0][0].shape                                # doctest: +SKIP
torch.Size([1280])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler, TensorDataset

from headstart.backbones import Classifier
from headstart.cache import ImageStore
from headstart.config import TrainConfig
from headstart.data import Dataset
from headstart.distributed import Ranks
from headstart.imbalance import balanced_draw_weights
from headstart.layouts import SPLITS
from headstart.progress import track

log = logging.getLogger(__name__)

# Frozen-prefix activations are stored in half precision: half the memory, within fp16 rounding.
CACHE_DTYPE = torch.float16


class ImageSet(torch.utils.data.Dataset):
    """Decoded images from the cache as float tensors in [0, 1], augmented for training.

    The augmentation of image i in epoch e draws from its own seed (seed, e, i), so a resumed
    run augments exactly as an uninterrupted one, whatever else used the random generator.
    ``flip``: every image mirrored (test-time augmentation's second view). ``keys``: the number each
    image's augmentation is seeded by, when not its place in ``indices`` (a rank's share of a split
    augments as the whole split would: ``headstart.views``).
    """

    def __init__(self, store: ImageStore, indices: list[int], labels: list[int], augment: bool, seed: int = 0,
                 flip: bool = False, keys: Sequence[int] | None = None):
        self.store, self.indices, self.labels, self.seed, self.epoch = store, indices, labels, seed, 0
        self.flip, self.keys = flip, keys
        self.transform = None
        if augment:
            from torchvision.transforms import v2

            size = store.array.shape[1]
            # Light augmentation: the default recipe's random resized crop and horizontal flip.
            self.transform = v2.Compose([v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
                                         v2.RandomHorizontalFlip()])

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


def seed_of(*parts: int) -> int:
    return hash(parts) % (2**31)  # hash of a tuple of ints is stable across runs


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a resumed run sees the same order, and every
    rank the same one. It also tells the dataset the epoch (Lightning calls ``set_epoch`` before
    the epoch's first batch). A dataset with a ``pick`` method (``headstart.views.ViewSet``) turns
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
                batch = (batch * self.world)[:self.world]
            yield batch[self.rank::self.world]


def split_indices(ds: Dataset) -> dict[str, tuple[list[int], list[int]]]:
    """For each split, the sample indices and labels."""
    out = {}
    for split in SPLITS:
        idx = [i for i, s in enumerate(ds.samples) if s.split == split]
        out[split] = (idx, [ds.samples[i].label for i in idx])
    return out


@torch.inference_mode()
def extract_features(model: Classifier, store: ImageStore, indices: list[int], batch_size: int = 64,
                     device: str | torch.device = "cpu", progress: bool = False, upto: nn.Module | None = None,
                     dtype: torch.dtype = torch.float32, channels_last: bool = False, split: str = "",
                     bf16: bool = False, flip: bool = False, images: ImageSet | None = None) -> torch.Tensor:
    """What a frozen part of the model makes of the given images, computed once: the pooled
    features (``model.forward_features``), or the activations of the frozen prefix ``upto``.
    ``flip``: of the images' mirror images (test-time augmentation). ``images``: these images of
    ``indices`` instead of the plain ones (augmented views)."""
    device = torch.device(device)
    model.eval().to(device)
    fn = upto if upto is not None else model.forward_features
    # No images (a rank's share of a tiny split): one is run all the same, for the output's shape.
    images = images or ImageSet(store, indices or [0], [0] * max(len(indices), 1), augment=False, flip=flip)
    loader = DataLoader(images, batch_size=batch_size)
    what = "features" if upto is None else "frozen layers"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):  # as training
        chunks = [fn(memory_layout(x.to(device), channels_last)).to(dtype).cpu()
                  for x, _ in track(loader, len(loader), f"Computing {what} (once)" + (f" for {split}" if split else ""),
                                    progress)]
    return torch.cat(chunks)[:len(indices)]


def memory_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images (and 4-D activations) in NHWC memory order when asked: what fast convolutions read."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def leading_frozen(model: Classifier) -> int:
    k = 0
    while k < len(model.groups) and not any(p.requires_grad for p in model.groups[k].params):
        k += 1
    return k


def frozen_rows(cfg: TrainConfig, model: Classifier, store: ImageStore, idx: list[int], ranks: Ranks, progress: bool,
                split: str, view: int | None = None, **kw) -> torch.Tensor:
    """What frozen layers make of the images ``idx`` of one split (``extract_features``' options in
    ``kw``), once in total: each rank computes its share of the images on its own device, and every
    rank gets all of them. ``view``: of the images augmented as training augments them in epoch
    ``view`` (an augmented view, ``headstart.views``), whichever rank computes them."""
    mine = ranks.share(len(idx))
    images = None
    if view is not None:
        keys = list(mine) or [0]  # each image's place in the split seeds its augmentation
        images = ImageSet(store, [idx[i] for i in keys], [0] * len(keys), augment=True, seed=cfg.seed, keys=keys)
        images.epoch = view
    rows = extract_features(model, store, [idx[i] for i in mine], device=ranks.device, progress=progress and ranks.is_zero,
                            channels_last=cfg.channels_last, split=split, bf16=cfg.precision in ("auto", "bf16-mixed"),
                            images=images, **kw)
    log.info("frozen pass, %s: rank %d of %d computed %d of %d images", split, ranks.rank, ranks.world, len(mine), len(idx))
    return ranks.gather_rows(rows, len(idx))


def training_inputs(cfg: TrainConfig, model: Classifier, ds: Dataset, store: ImageStore, progress: bool,
                    ranks: Ranks | None = None):
    """Per split, what the trainer reads, and the trunk that turns it into pooled features:

    - ``features``: pooled features computed once; the trunk is nothing;
    - ``partial`` without augmentation: the frozen prefix's activations computed once (fp16);
      the trunk is the layers after it;
    - (with ``aug_views``, ``headstart.views.view_inputs`` comes first: either of those, on
      augmented views of the training images)
    - otherwise: the images; the trunk is the whole body.

    Once in total: with several ranks, each computes its share of the images (``frozen_rows``).
    """
    splits, ranks = split_indices(ds), ranks or Ranks()

    def once(**kw) -> dict:
        out = {s: TensorDataset(frozen_rows(cfg, model, store, idx, ranks, progress, s, **kw), torch.tensor(y))
               for s, (idx, y) in splits.items()}
        model.cpu()
        return out

    if cfg.strategy == "features":  # never augmented (config.as_trained): the features are computed once
        return once(), nn.Identity()
    k = leading_frozen(model)
    cut = model.split(k) if cfg.strategy in ("partial", "half") and cfg.cache_frozen and k else None
    if cut is not None and not cfg.augment:
        prefix, rest = cut
        log.info("%s: the %d frozen groups are computed once; epochs run the rest", cfg.strategy, k)
        return once(upto=prefix, dtype=CACHE_DTYPE), rest
    if cut is not None:
        log.warning("%s: augmentation is on, so the frozen layers run every epoch (--aug-views 4 computes 4 augmented "
                    "views through them once; --no-augment, the plain images once)", cfg.strategy)
    images = {s: ImageSet(store, idx, y, augment=cfg.augment and s == "training", seed=cfg.seed)
              for s, (idx, y) in splits.items()}
    return images, None


def mirrored_inputs(cfg: TrainConfig, model: Classifier, loader: DataLoader, ds: Dataset, store, device) -> DataLoader:
    """The evaluation split's mirror images as training reads them, for test-time augmentation:
    images mirrored as they are read; where training reads what frozen layers made of the images
    (features, frozen-prefix activations), those layers' output on the mirror images, computed
    once, here: the frozen layers are the same as in the frozen pass, never recomputed per epoch."""
    idx, y = split_indices(ds)["evaluation"]
    if isinstance(loader.dataset, ImageSet):
        return DataLoader(ImageSet(store, idx, y, augment=False, flip=True), batch_size=loader.batch_size)
    before = next(model.parameters()).device
    prefix = None if cfg.strategy == "features" else model.split(leading_frozen(model))[0]
    rows = extract_features(model, store, idx, device=device, upto=prefix, flip=True,
                            dtype=torch.float32 if prefix is None else CACHE_DTYPE,  # as the frozen pass stored them
                            channels_last=cfg.channels_last, bf16=cfg.precision in ("auto", "bf16-mixed"))
    model.to(before)
    return DataLoader(TensorDataset(rows, torch.tensor(y)), batch_size=loader.batch_size)
