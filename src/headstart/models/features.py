"""Feature extraction: decoded images through frozen layers, inference only, in batches, in the
fastest engine (``headstart.engines``), and kept on disk so that no later run computes them again.

What the ``features`` strategy, the frozen prefix of ``partial``/``half``, augmented views, the
advice's probe and test-time augmentation's mirrored pass all compute. ``memory_layout`` puts a
batch in the order the weights are in (channels-last or not).

Kept across runs (``frozen_key``, ``load_frozen``, ``save_frozen``): the outputs are written under
``<cache dir>/frozen/<key>.npy``, the key covering the decoded images (the image cache's key and
which images), what the frozen layers compute (structure, every weight, preprocessing), the engine
and precision that compute them, and how the images are read (mirrored, augmented view and seed),
so outputs computed one way are never taken for another's. Outputs over ``FROZEN_CACHE_LIMIT``
(large frozen-prefix activations) are not kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.data.cache import ImageStore
from headstart.data.image_set import ImageSet
from headstart.engines.choice import Engine
from headstart.models.classifier import Classifier
from headstart.utils.files import cache_dir, write_atomically, write_text
from headstart.utils.progress import track

log = logging.getLogger(__name__)

FROZEN_CACHE_LIMIT = 2 * 2**30  # bytes: outputs larger than this are recomputed rather than kept on disk


def frozen_module(model: Classifier, upto: nn.Module | None) -> nn.Module:
    """The frozen layers a pass runs: the prefix ``upto``, else the whole body (pooled features)."""
    return upto if upto is not None else model.features_module()


@torch.inference_mode()
def extract_features(
    model: Classifier,
    store: ImageStore,
    indices: list[int],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    upto: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    split: str = "",
    bf16: bool = False,
    flip: bool = False,
    images: ImageSet | None = None,
    engine: Engine | None = None,
) -> torch.Tensor:
    """What a frozen part of the model makes of the given images, computed once: the pooled
    features (``model.forward_features``), or the activations of the frozen prefix ``upto``.
    ``flip``: of the images' mirror images (test-time augmentation). ``images``: these images of
    ``indices`` instead of the plain ones (augmented views). ``engine``: what runs the frozen layers
    (``headstart.engines.choice.Engine``; None: PyTorch)."""
    device = torch.device(device)
    model.eval().to(device)
    module = frozen_module(model, upto)
    # No images (a rank's share of a tiny split): one is run all the same, for the output's shape.
    images = images or ImageSet(store, indices or [0], [0] * max(len(indices), 1), augment=False, flip=flip)
    loader = DataLoader(images, batch_size=batch_size)
    what = "features" if upto is None else "frozen layers"
    autocast = bf16 and device.type == "cuda"  # as training

    def torch_run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return module(memory_layout(x.to(device), channels_last))

    run, chunks = None, []
    for x, _ in track(loader, len(loader), f"Computing {what} (once)" + (f" for {split}" if split else ""), progress):
        if run is None and engine is not None:  # decided on the first batch (checked against PyTorch)
            run, out = engine.start(module, x, torch_run, repr(model.preprocessing), len(indices))
        else:
            run = run or torch_run
            out = run(x)
        chunks.append(out.to(dtype).cpu())
    return torch.cat(chunks)[: len(indices)]


def memory_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images (and 4-D activations) in NHWC memory order when asked: what fast convolutions read."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def frozen_key(
    store: ImageStore, indices: list[int], frozen: str, engine: str, dtype: torch.dtype, how: str = ""
) -> str | None:
    """The name of these outputs on disk (None: not kept, the images are not from the decode cache).
    ``frozen``: the frozen layers' ``Engine.fingerprint``; ``engine``: what computes them (``Engine.labels``); ``how``:
    how the images are read (mirrored, an augmented view with its seed)."""
    if not store.key:
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{store.key}|{engine}|{dtype}|{how}|{frozen}".encode())
    h.update(np.ascontiguousarray(store.rows[np.asarray(indices, dtype=np.int64)]).tobytes())
    return h.hexdigest()


def _path(key: str) -> Path:
    return cache_dir() / "frozen" / f"{key}.npy"


def load_frozen(key: str | None) -> tuple[torch.Tensor, dict] | None:
    """Outputs kept under ``key`` by an earlier pass, and what computed them; or None."""
    if key is None or not _path(key).is_file():
        return None
    try:
        rows = torch.from_numpy(np.load(_path(key), allow_pickle=False))
        about = json.loads(_path(key).with_suffix(".json").read_text())
    except (OSError, ValueError) as e:  # a file damaged or removed since: computed again
        log.warning("the kept frozen outputs %s cannot be read (%s); computing them again", _path(key), e)
        return None
    log.info("frozen outputs read from %s: not computed again", _path(key))
    return rows, about if isinstance(about, dict) else {}


def is_kept(key: str | None) -> bool:
    return key is not None and _path(key).is_file() and _path(key).with_suffix(".json").is_file()


def save_frozen(key: str | None, rows: torch.Tensor, about: dict) -> None:
    """Keep ``rows`` under ``key`` for later passes, with ``about`` (what computed them); not over
    ``FROZEN_CACHE_LIMIT``; a full disk only warns."""
    if key is None or rows.numel() * rows.element_size() > FROZEN_CACHE_LIMIT:
        return
    buffer = io.BytesIO()
    np.save(buffer, rows.numpy())
    try:
        write_atomically(_path(key), lambda f: f.write(buffer.getbuffer()))
        write_text(_path(key).with_suffix(".json"), json.dumps(about))  # last: is_kept needs both
    except OSError as e:
        log.warning("the frozen outputs could not be kept on disk (%s); a later run computes them again", e)
