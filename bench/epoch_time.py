"""headstart against a naive loop written like the tutorial, in one process, on the same data,
seed, backbone and recipe: time per epoch, first-epoch overhead, peak memory and accuracy.

    python bench/epoch_time.py [--data demo] [--input-size 160] [--epochs 3] [--strategies features,half,full]
    python bench/epoch_time.py --aug-views 4 [--strategies half] [--input-size 64] [--epochs 5]

The naive loop is what the tutorial does, in plain PyTorch: it decodes and resizes every image
again in every epoch, and pushes every batch through the whole network, frozen layers included.
headstart decodes once (memory-mapped cache, built cold: a fresh cache folder), computes
what is frozen once, and uses channels-last tensors.

Both sides train the same model (same weights, same groups frozen, same optimizer, learning
rates and schedule, same shuffling and dropout seeds, augmentation off so the frozen layers can
be cached), keep the best weights by validation loss, and are scored on the evaluation split.
Epoch times include validation. "first" is the first epoch, and for headstart everything before
it too (reading, decoding, features: each strategy starts with a cold image cache). Peak memory
is the process's largest resident set while that side ran (sampled every 20 ms), and how much
it grew during that side's run.

With ``--aug-views K`` it measures augmentation instead, headstart against itself:
each strategy (``half`` by default) with augmentation on, its frozen layers run every epoch,
against K augmented views computed once through them (``aug_views=K``). "first" includes
computing the views; the memory is the views' size (recorded in metrics.json) and the peak RSS.

Timings are noisy on a shared machine: read the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from headstart import create_model, fit
from headstart.config import resolve_config
from headstart.data.dataset import load_dataset, split_indices
from headstart.models import strategies as S
from headstart.training.schedule import lr_lambda


class PeakMemory:
    """The largest resident set size (MB) of this process while the ``with`` block ran, and how much
    it grew over the size at the start (both sides run in one process: the growth is the fairer figure)."""

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        self.growth = self.peak - self.start


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- the naive loop, as the tutorial writes it -----------------------------------------------


class DecodeEveryTime(torch.utils.data.Dataset):
    """Open, decode and resize the image file on every access: what a plain loader does."""

    def __init__(self, samples, pre):
        self.samples, self.pre = samples, pre

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        with Image.open(self.samples[i].path) as im:
            image = self.pre.resize_image(im.convert("RGB"))
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return x, self.samples[i].label


def naive(cfg, ds) -> dict:
    from headstart.data.samplers import seed_of as _seed  # the same shuffling and dropout seeds as headstart

    torch.manual_seed(cfg.seed)
    model = create_model(
        cfg.backbone,
        ds.num_classes,
        weights=cfg.weights,
        input_size=cfg.input_size,
        head={"dropout": cfg.head_dropout, "hidden": cfg.head_hidden},
    )
    S.apply_strategy(model, cfg.strategy)
    model.pretrained_bn_stats = cfg.pretrained_bn_stats
    splits = {s: [ds.samples[i] for i in idx] for s, (idx, _) in split_indices(ds).items()}
    sets = {s: DecodeEveryTime(v, model.preprocessing) for s, v in splits.items()}
    steps = math.ceil(len(sets["training"]) / cfg.batch_size)
    opt = torch.optim.AdamW(
        S.param_groups(model, cfg.lr, cfg.backbone_lr, cfg.lr_decay), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, steps))
    train_loss, eval_loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), nn.CrossEntropyLoss()
    best, best_loss, seconds = None, float("inf"), []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(sets["training"]), generator=torch.Generator().manual_seed(_seed(cfg.seed, epoch)))
        loader = DataLoader(torch.utils.data.Subset(sets["training"], order.tolist()), batch_size=cfg.batch_size)
        model.train()
        for b, (x, y) in enumerate(loader):
            torch.manual_seed(_seed(cfg.seed, epoch, b))
            loss = train_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val_loss = _score(model, sets["validation"], cfg.batch_size, eval_loss)[0]
        if val_loss < best_loss:
            best, best_loss = copy.deepcopy(model.state_dict()), val_loss
        seconds.append(time.perf_counter() - start)
    model.load_state_dict(best)
    return {"seconds": seconds, "accuracy": _score(model, sets["evaluation"], cfg.batch_size, eval_loss)[1]}


@torch.no_grad()
def _score(model, dataset, batch_size: int, loss_fn) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits = model(x)
        loss += loss_fn(logits, y).item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
    return loss / len(dataset), correct / len(dataset)


# --- headstart --------------------------------------------------------------------------------


def headstart(cfg) -> dict:
    run = fit(config=cfg, progress=False)
    seconds = [r["seconds"] for r in run.history]
    seconds[0] += run.metrics["setup_seconds"]  # reading, decoding and computing what is frozen
    return {"seconds": seconds, "accuracy": run.metrics["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo", help="Any dataset headstart reads [the embedded demo].")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--strategies", default=None, help="[features,half,full; with --aug-views: half]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--aug-views",
        type=int,
        default=0,
        help="Measure augmentation: frozen layers every epoch against K views computed once.",
    )
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is reported apart from the others.")
    args.strategies = args.strategies or ("half" if args.aug_views else "features,half,full")

    here = Path(__file__).parent
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here
    ).stdout.strip()
    if subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
    ).stdout.strip():
        commit += " + uncommitted changes"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}; "
        f"commit {commit or '?'}",
        flush=True,
    )
    print(
        f"data {args.data}, backbone {args.backbone}, {args.input_size} px, {args.epochs} epochs, "
        f"batch {args.batch_size}, seed {args.seed}, augmentation {'on' if args.aug_views else 'off'}",
        flush=True,
    )
    if args.aug_views:
        return views(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset(args.data, seed=args.seed)
        for strategy in args.strategies.split(","):
            os.environ["HEADSTART_CACHE"] = str(Path(tmp) / f"cache-{strategy}")  # cold: every first epoch decodes
            cfg = resolve_config(
                overrides=dict(
                    data=args.data,
                    backbone=args.backbone,
                    input_size=args.input_size,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    strategy=strategy,
                    augment=False,
                    early_stopping=0,
                    runs_dir=str(Path(tmp) / "runs"),
                )
            )
            with PeakMemory() as mem_naive:
                a = naive(cfg, ds)
            print(
                f"{strategy:9s} naive:     epochs {_fmt(a['seconds'])}  accuracy {a['accuracy']:.4f}  "
                f"peak {mem_naive.peak:.0f} MB (+{mem_naive.growth:.0f})",
                flush=True,
            )
            with PeakMemory() as mem_hs:
                b = headstart(cfg)
            print(
                f"{strategy:9s} headstart: epochs {_fmt(b['seconds'])}  accuracy {b['accuracy']:.4f}  "
                f"peak {mem_hs.peak:.0f} MB (+{mem_hs.growth:.0f})",
                flush=True,
            )
            rows.append((strategy, a, b, mem_naive, mem_hs))

    print(
        "\n| strategy | naive s/epoch (later) | headstart s/epoch (later) | speed-up (later epochs) "
        "| first epoch naive / headstart (s) | accuracy naive / headstart "
        "| peak RSS MB naive / headstart (growth during the phase) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for strategy, a, b, ma, mb in rows:
        later_a, later_b = np.mean(a["seconds"][1:]), np.mean(b["seconds"][1:])
        print(
            f"| {strategy} | {later_a:.2f} | {later_b:.2f} | {later_a / later_b:.1f}× | "
            f"{a['seconds'][0]:.1f} / {b['seconds'][0]:.1f} | {a['accuracy']:.4f} / {b['accuracy']:.4f} | "
            f"{ma.peak:,.0f} (+{ma.growth:,.0f}) / {mb.peak:,.0f} (+{mb.growth:,.0f}) |"
        )


def views(args) -> None:
    """Each strategy with augmentation: without views (frozen layers every epoch), then with K views."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            side = {}
            for k in (0, args.aug_views):
                os.environ["HEADSTART_CACHE"] = str(Path(tmp) / f"cache-{strategy}-{k}")  # cold, as above
                cfg = resolve_config(
                    overrides=dict(
                        data=args.data,
                        backbone=args.backbone,
                        input_size=args.input_size,
                        epochs=args.epochs,
                        batch_size=args.batch_size,
                        seed=args.seed,
                        strategy=strategy,
                        augment=True,
                        aug_views=k,
                        early_stopping=0,
                        runs_dir=str(Path(tmp) / "runs"),
                    )
                )
                with PeakMemory() as mem:
                    run = fit(config=cfg, progress=False)
                seconds = [r["seconds"] for r in run.history]
                seconds[0] += run.metrics["setup_seconds"]
                side[k] = (seconds, run.metrics, mem)
                print(
                    f"{strategy:9s} aug_views={run.metrics.get('aug_views', 0)}: epochs {_fmt(seconds)}  "
                    f"accuracy {run.metrics['accuracy']:.4f}  "
                    f"views {run.metrics.get('aug_views_bytes', 0) / 2**20:.1f} MB  "
                    f"peak {mem.peak:.0f} MB (+{mem.growth:.0f})",
                    flush=True,
                )
            rows.append((strategy, side[0], side[args.aug_views]))
    print(
        f"\n| strategy | every epoch s/epoch (later) | {args.aug_views} views s/epoch (later) | speed-up "
        "| first epoch every / views (s) | accuracy every / views | views MB | peak RSS MB every / views (growth) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for strategy, (a, ma, pa), (b, mb, pb) in rows:
        later_a, later_b = np.mean(a[1:]), np.mean(b[1:])
        print(
            f"| {strategy} | {later_a:.2f} | {later_b:.2f} | {later_a / later_b:.1f}× | {a[0]:.1f} / {b[0]:.1f} | "
            f"{ma['accuracy']:.4f} / {mb['accuracy']:.4f} | {mb.get('aug_views_bytes', 0) / 2**20:.1f} | "
            f"{pa.peak:,.0f} (+{pa.growth:,.0f}) / {pb.peak:,.0f} (+{pb.growth:,.0f}) |"
        )


def _fmt(seconds: list[float]) -> str:
    return " ".join(f"{s:.2f}" for s in seconds)


if __name__ == "__main__":
    main()
