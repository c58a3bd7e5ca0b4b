"""Feature extraction: decoded images through frozen layers, inference only, in batches.

What the ``features`` strategy, the frozen prefix of ``partial``/``half`` and the advice's probe all
compute; ``memory_layout`` puts a batch in the order the weights are in (channels-last or not).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from headstart.data.cache import ImageStore
from headstart.data.image_set import ImageSet
from headstart.models.classifier import Classifier
from headstart.utils.progress import track


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
) -> torch.Tensor:
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
        chunks = [
            fn(memory_layout(x.to(device), channels_last)).to(dtype).cpu()
            for x, _ in track(
                loader, len(loader), f"Computing {what} (once)" + (f" for {split}" if split else ""), progress
            )
        ]
    return torch.cat(chunks)[: len(indices)]


def memory_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images (and 4-D activations) in NHWC memory order when asked: what fast convolutions read."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
