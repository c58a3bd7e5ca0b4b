"""The frozen pass: what frozen layers make of the images, computed once, and what training reads.

Frozen layers give the same output every epoch, so it is computed once, before training:

- ``features``: the pooled features of the whole frozen backbone; epochs train only the head;
- ``partial``/``half`` without augmentation: the activations of the frozen prefix (in fp16);
  epochs run only the layers after it;
- ``features``, ``partial``/``half`` with ``aug_views``: the same, on K augmented views of each
  training image (``headstart.training.augmented_views``); epochs read one view per image;
- otherwise (augmentation, or everything trains): the decoded images themselves (``ImageSet``).

>>> inputs, trunk = training_inputs(cfg, model, ds, store)        # doctest: +SKIP
>>> inputs["training"][0][0].shape                                # doctest: +SKIP
torch.Size([1280])
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from headstart.config import TrainConfig
from headstart.data.cache import ImageStore
from headstart.data.dataset import Dataset, split_indices
from headstart.data.image_set import ImageSet, streamed_images
from headstart.data.shard_writer import write_features
from headstart.data.shards import read_features
from headstart.engines.choice import Engine
from headstart.models.classifier import Classifier
from headstart.models.features import extract_features, frozen_key, frozen_module, is_kept, load_frozen, save_frozen
from headstart.training.distributed import Ranks

log = logging.getLogger(__name__)

# Frozen-prefix activations are stored in half precision: half the memory, within fp16 rounding.
CACHE_DTYPE = torch.float16


def leading_frozen(model: Classifier) -> int:
    k = 0
    while k < len(model.groups) and not any(p.requires_grad for p in model.groups[k].params):
        k += 1
    return k


def frozen_rows(
    cfg: TrainConfig,
    model: Classifier,
    store: ImageStore,
    idx: list[int],
    ranks: Ranks,
    progress: bool,
    split: str,
    view: int | None = None,
    engine: Engine | None = None,
    **kw,
) -> torch.Tensor:
    """What frozen layers make of the images ``idx`` of one split (``extract_features``' options in
    ``kw``), once in total: each rank computes its share of the images on its own device, and every
    rank gets all of them. ``view``: of the images augmented as training augments them in epoch
    ``view`` (an augmented view, ``headstart.training.augmented_views``), whichever rank computes them.
    ``engine`` runs the frozen layers; what an earlier run computed the same way is read from disk
    (``headstart.models.features.frozen_key``), when every rank finds it. Of prepared shards, the features are also
    written beside them as shards (``headstart.data.shard_writer.write_features``), and streamed from there by a run on
    another machine."""
    engine = engine or Engine(cfg.engine, cfg.engine_precision)
    bf16 = cfg.precision in ("auto", "bf16-mixed")
    how = f"flip={kw.get('flip', False)}" + (f"|view={view}|seed={cfg.seed}" if view is not None else "")
    dtype = kw.get("dtype", torch.float32)
    frozen = engine.fingerprint(frozen_module(model, kw.get("upto")), repr(model.preprocessing))
    shards = getattr(store, "shards", None)  # prepared shards: features may be beside them (write_features)
    beside = shards is not None and view is None and kw.get("upto") is None and not kw.get("flip")
    for label in engine.labels(ranks.device, bf16):  # what this engine may have computed earlier
        key = frozen_key(store, idx, frozen, label, dtype, how)
        if ranks.all(is_kept(key)) and (kept := load_frozen(key)) is not None and len(kept[0]) == len(idx):
            engine.used = {**kept[1], "kept": True}  # computed by an earlier run, read from disk
            return kept[0]
        if beside and key and ranks.all((streamed := read_features(shards, key)) is not None):
            engine.used = {**streamed[1], "kept": True, "streamed": True}  # another machine computed them
            rows = torch.from_numpy(streamed[0])
            save_frozen(key, rows, streamed[1])  # and kept on this machine's disk
            return rows
    mine = ranks.share(len(idx))
    images = None
    if view is not None:
        keys = list(mine) or [0]  # each image's place in the split seeds its augmentation
        images = ImageSet(store, [idx[i] for i in keys], [0] * len(keys), augment=True, seed=cfg.seed, keys=keys)
        images.epoch = view
    rows = extract_features(
        model,
        store,
        [idx[i] for i in mine],
        device=ranks.device,
        progress=progress and ranks.is_zero,
        channels_last=cfg.channels_last,
        split=split,
        bf16=bf16,
        images=images,
        engine=engine,
        **kw,
    )
    log.info(
        "frozen pass, %s: rank %d of %d computed %d of %d images", split, ranks.rank, ranks.world, len(mine), len(idx)
    )
    rows = ranks.gather_rows(rows, len(idx))
    if ranks.is_zero:
        key = frozen_key(store, idx, frozen, engine.actual(ranks.device, bf16), dtype, how)
        save_frozen(key, rows, engine.used)
        if beside and key:
            write_features(shards, key, rows.numpy(), engine.used)
    return rows


def training_inputs(
    cfg: TrainConfig,
    model: Classifier,
    ds: Dataset,
    store: ImageStore,
    progress: bool,
    ranks: Ranks | None = None,
    engine: Engine | None = None,
):
    """Per split, what the trainer reads, and the trunk that turns it into pooled features:

    - ``features``: pooled features computed once; the trunk is nothing;
    - ``partial`` without augmentation: the frozen prefix's activations computed once (fp16);
      the trunk is the layers after it;
    - (with ``aug_views``, ``headstart.training.augmented_views.view_inputs`` comes first: either of those, on
      augmented views of the training images)
    - otherwise: the images; the trunk is the whole body. Prepared shards (``ds.stream``): the training
      images streamed (``headstart.data.image_set.streamed_images``), the others read from the shards by index.

    Once in total: with several ranks, each computes its share of the images (``frozen_rows``).
    """
    splits, ranks = split_indices(ds), ranks or Ranks()

    def once(**kw) -> dict:
        out = {
            s: TensorDataset(
                frozen_rows(cfg, model, store, idx, ranks, progress, s, engine=engine, **kw), torch.tensor(y)
            )
            for s, (idx, y) in splits.items()
        }
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
        log.warning(
            "%s: augmentation is on, so the frozen layers run every epoch (--aug-views auto computes augmented "
            "views through them once; --no-augment, the plain images once)",
            cfg.strategy,
        )
    images = {
        s: ImageSet(store, idx, y, augment=cfg.augment and s == "training", seed=cfg.seed)
        for s, (idx, y) in splits.items()
    }
    if ds.stream is not None:  # prepared shards: training streams its split, each rank its share, every epoch
        images["training"] = streamed_images(
            ds.stream, "training", cfg.augment, cfg.seed, ds.num_classes, drop_last=ranks.world > 1
        )
    return images, None


def mirrored_inputs(
    cfg: TrainConfig, model: Classifier, loader: DataLoader, ds: Dataset, store, device, engine: Engine | None = None
) -> DataLoader:
    """The evaluation split's mirror images as training reads them, for test-time augmentation:
    images mirrored as they are read; where training reads what frozen layers made of the images
    (features, frozen-prefix activations), those layers' output on the mirror images, computed
    once, here: the frozen layers are the same as in the frozen pass, never recomputed per epoch."""
    idx, y = split_indices(ds)["evaluation"]
    if isinstance(loader.dataset, ImageSet):
        return DataLoader(ImageSet(store, idx, y, augment=False, flip=True), batch_size=loader.batch_size)
    before = next(model.parameters()).device
    prefix = None if cfg.strategy == "features" else model.split(leading_frozen(model))[0]
    dtype = torch.float32 if prefix is None else CACHE_DTYPE  # as the frozen pass stored them
    rows = frozen_rows(
        cfg,
        model,
        store,
        idx,
        Ranks(device=torch.device(device)),
        False,
        "evaluation",
        engine=engine,
        upto=prefix,
        flip=True,
        dtype=dtype,
    )
    model.to(before)
    return DataLoader(TensorDataset(rows, torch.tensor(y)), batch_size=loader.batch_size)
