"""Throughput on whatever accelerator the machine has: images a second of headstart's training step and of
its frozen pass, for the tutorial's heaviest case and the default backbone.

- VGG16, full fine-tuning, 224 px: the tutorial measured 89 s an epoch for its 9,866 training
  images on its GPU, about 111 images/s;
- EfficientNet-Lite0, full fine-tuning, 224 px;
- the frozen pass (``headstart.models.features.extract_features``) of both: what ``features`` costs once.

Training runs headstart's own LightningModule (``TransferModule``) under Lightning, bf16 mixed
precision and channels-last on a GPU, 32-bit on a CPU, on random images of the right shape: the
arithmetic is what it is on photos. The first steps (cuDNN autotuning, allocator warm-up) are not
timed.

    python bench/gpu.py                 # on the GPU if there is one; batch 64, 30 timed steps
    python bench/gpu.py --dry-run       # tiny and on the CPU, in seconds (the test suite runs it)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
import warnings

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from headstart import create_model
from headstart.config import resolve_config
from headstart.data.cache import ImageStore
from headstart.models.features import extract_features
from headstart.models.strategies import apply_strategy
from headstart.training.module import TransferModule

TUTORIAL_IMAGES_PER_SECOND = 9866 / 89  # VGG16 full fine-tuning, the tutorial's GPU


class StepTimer(L.Callback):
    """Wall-clock time of the training steps after the first ``warmup``."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.steps += 1
            self.seconds = time.perf_counter() - self.start


def train_throughput(backbone: str, size: int, batch: int, steps: int, warmup: int, accelerator: str) -> float:
    """Images a second of a full fine-tuning step."""
    gpu = accelerator == "gpu"
    cfg = dataclasses.replace(
        resolve_config(overrides={"backbone": backbone, "strategy": "full", "batch_size": batch}), input_size=size
    )
    model = create_model(backbone, 11, weights="none", input_size=size)
    apply_strategy(model, "full")
    model.to(memory_format=torch.channels_last)
    n = batch * (steps + warmup)
    images = TensorDataset(torch.rand(n, 3, size, size), torch.randint(0, 11, (n,)))
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(TransferModule(model, cfg, steps + warmup, {}), DataLoader(images, batch_size=batch, pin_memory=gpu))
    return timer.steps * batch / timer.seconds


def feature_throughput(backbone: str, size: int, batch: int, count: int, device: str) -> float:
    """Images a second of the frozen pass over decoded images (uint8, as the cache holds them)."""
    model = create_model(backbone, 11, weights="none", input_size=size)
    store = ImageStore(
        np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8), np.arange(count)
    )
    extract_features(model, store, list(range(min(batch, count))), batch_size=batch, device=device)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    extract_features(model, store, list(range(count)), batch_size=batch, device=device, channels_last=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="Timed training steps per backbone.")
    parser.add_argument("--dry-run", action="store_true", help="Tiny, on the CPU: checks the script runs.")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # Lightning's banners, not the figures
    warnings.filterwarnings("ignore", message=".*(val_dataloader|LeafSpec|does not have many workers).*")
    gpu = torch.cuda.is_available() and not args.dry_run
    accelerator, device = ("gpu", "cuda") if gpu else ("cpu", "cpu")
    size, batch, steps, warmup = (32, 2, 2, 1) if args.dry_run else (224, args.batch_size, args.steps, 5)
    where = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}; {size} px, batch {batch}, {'bf16 mixed' if gpu else '32-bit'}")
    rows = []
    for backbone in ("vgg16", "efficientnet_lite0"):
        train = train_throughput(backbone, size, batch, steps, warmup, accelerator)
        features = feature_throughput(backbone, size, batch, batch * (2 if args.dry_run else 20), device)
        rows.append(
            {
                "backbone": backbone,
                "train_images_per_s": round(train, 1),
                "features_images_per_s": round(features, 1),
                "epoch_s_for_9866": round(9866 / train, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print("\n| backbone | full fine-tuning (images/s) | an epoch of Food-11's 9,866 (s) | frozen pass (images/s) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backbone']} | {r['train_images_per_s']:,} | {r['epoch_s_for_9866']:,} "
            f"| {r['features_images_per_s']:,} |"
        )
    print(f"\nThe tutorial: VGG16 full fine-tuning at {TUTORIAL_IMAGES_PER_SECOND:.0f} images/s (89 s an epoch).")


if __name__ == "__main__":
    main()
