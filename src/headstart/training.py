"""Training on Lightning: the tutorial's loop (fit, keep the best by validation loss, evaluate),
for every strategy, with a run folder a person can browse.

>>> run = fit("demo", strategy="features", input_size=96, epochs=5)
>>> run.metrics["accuracy"], run.metrics["correct"], run.metrics["total"]   # doctest: +SKIP
(0.78, 234, 300)

A run is ``<runs_dir>/<name>/``: ``config.yaml`` (resolved, enough to run again),
``history.csv`` (one row an epoch), ``checkpoints/best.ckpt`` and ``last.ckpt``, ``data.json``
(what was read, and what was skipped) and ``metrics.json`` (the evaluation split at the best
checkpoint).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from headstart import strategies as S
from headstart._files import write_text
from headstart.backbones import Classifier, count_params, create_model
from headstart.cache import ImageStore, decoded_images
from headstart.config import TrainConfig, coerce, load_config, read_yaml, resolve_config, save_config
from headstart.data import Dataset, load_dataset
from headstart.evaluation import compute, write_evaluation
from headstart.report import write_run_report

log = logging.getLogger(__name__)

# Frozen-prefix activations are stored in half precision: half the memory, within fp16 rounding.
CACHE_DTYPE = torch.float16
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "backbone_lr", "trainable", "seconds"]


class TrainingError(RuntimeError):
    """A run that cannot start or go on as asked (e.g. a resume that does not match)."""


# --- data ---------------------------------------------------------------------------------


class ImageSet(torch.utils.data.Dataset):
    """Decoded images from the cache as float tensors in [0, 1], augmented for training.

    The augmentation of image i in epoch e draws from its own seed (seed, e, i), so a resumed
    run augments exactly as an uninterrupted one, whatever else used the random generator.
    """

    def __init__(self, store: ImageStore, indices: list[int], labels: list[int], augment: bool, seed: int = 0):
        self.store, self.indices, self.labels, self.seed, self.epoch = store, indices, labels, seed, 0
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
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_seed(self.seed, self.epoch, i))
                x = self.transform(x)
        return x.float().div_(255), self.labels[i]


def _seed(*parts: int) -> int:
    return hash(parts) % (2**31)  # hash of a tuple of ints is stable across runs


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a resumed run sees the same order. It also
    tells the dataset the epoch (Lightning calls ``set_epoch`` before the epoch's first batch)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.n, self.seed, self.epoch = dataset, len(dataset), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())


def split_indices(ds: Dataset) -> dict[str, tuple[list[int], list[int]]]:
    """For each split, the sample indices and labels."""
    out = {}
    for split in ("training", "validation", "evaluation"):
        idx = [i for i, s in enumerate(ds.samples) if s.split == split]
        out[split] = (idx, [ds.samples[i].label for i in idx])
    return out


@torch.inference_mode()
def extract_features(model: Classifier, store: ImageStore, indices: list[int], batch_size: int = 64,
                     device: str | torch.device = "cpu", progress: bool = False, upto: nn.Module | None = None,
                     dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """What a frozen part of the model makes of the given images, computed once: the pooled
    features (``model.forward_features``), or the activations of the frozen prefix ``upto``."""
    from rich.progress import track

    model.eval().to(device)
    fn = upto if upto is not None else model.forward_features
    loader = DataLoader(ImageSet(store, indices, [0] * len(indices), augment=False), batch_size=batch_size)
    what = "features" if upto is None else "frozen layers"
    chunks = [fn(_layout(x.to(device), channels_last)).to(dtype).cpu()
              for x, _ in track(loader, description=f"Computing {what} (once)", disable=not progress, transient=True)]
    return torch.cat(chunks)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images (and 4-D activations) in NHWC memory order when asked: what fast convolutions read."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


# --- the Lightning module -----------------------------------------------------------------


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Linear warm-up, then constant or cosine decay to zero, by optimizer step."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    total = max(1, cfg.epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class TransferModule(L.LightningModule):
    """The model, its loss, optimizer and schedule, on images or on what frozen layers made of them."""

    def __init__(self, model: Classifier, cfg: TrainConfig, steps_per_epoch: int, extra: dict, trunk=None):
        super().__init__()
        self.model, self.cfg = model, cfg
        # What turns a batch into pooled features: the whole body on images; nothing on cached
        # features; the layers after the frozen prefix on its cached activations.
        self.trunk = trunk or model.forward_features
        self.steps_per_epoch, self.extra = steps_per_epoch, extra
        self.train_loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.eval_loss_fn = nn.CrossEntropyLoss()  # plain, so val_loss compares across recipes
        self.epoch_stats = {"train": torch.zeros(3), "val": torch.zeros(3)}  # loss sum, correct, count
        self._forward = torch.compile(self._plain_forward) if cfg.compile else self._plain_forward

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.trunk(_layout(x.float(), self.cfg.channels_last)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = (self.train_loss_fn if stage == "train" else self.eval_loss_fn)(logits, y)
        prefix = "" if stage == "train" else "val_"
        correct = (logits.argmax(1) == y).sum()
        self.log(f"{prefix}loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(f"{prefix}accuracy", correct / len(y), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        # Epoch sums of our own, so the history row does not depend on when Lightning reduces its metrics.
        stats = self.epoch_stats[stage]
        stats += torch.stack([loss.detach().float() * len(y), correct.float(), torch.tensor(float(len(y)), device=y.device)])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self.epoch_stats["val"] = torch.zeros(3, device=self.device)

    def epoch_means(self, stage: str) -> tuple[float, float]:
        """Mean loss and accuracy of the current epoch so far."""
        loss, correct, n = self.epoch_stats[stage].tolist()
        return loss / max(n, 1), correct / max(n, 1)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Dropout draws from a generator seeded by (seed, epoch, batch): resuming repeats it exactly.
        torch.manual_seed(_seed(self.cfg.seed, self.current_epoch, batch_idx))

    def on_train_epoch_start(self) -> None:
        self.epoch_stats["train"] = torch.zeros(3, device=self.device)
        # Lightning leaves modules in the mode it finds them; computing features put the model in
        # eval mode. Train mode here (the model keeps its frozen parts in eval mode itself).
        self.model.train()
        if self.cfg.strategy == "gradual":
            opened = S.unfreeze_top(self.model, min(self.current_epoch // self.cfg.unfreeze_every, len(self.model.groups)))
            if opened:
                log.info("epoch %d: training the head and %s", self.current_epoch + 1, ", ".join(opened))

    def configure_optimizers(self):
        cfg = self.cfg
        # gradual: every group is in the optimizer from the start; a frozen one has no gradient,
        # so it gets no optimizer state (and no weight decay) until it is opened.
        groups = S.param_groups(self.model, cfg.lr, cfg.backbone_lr, cfg.lr_decay, include_frozen=cfg.strategy == "gradual")
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[cfg.optimizer]
        kwargs = {"momentum": 0.9} if cfg.optimizer == "sgd" else {}
        opt = kind(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, self.steps_per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Everything needed to use the model without this code's arguments: how to rebuild it,
        # what its inputs must look like, and what its outputs mean.
        checkpoint["headstart"] = {
            "model": self.model.config, "preprocessing": self.model.preprocessing.to_dict(),
            "config": self.cfg.to_dict(), **self.extra,
        }


class History(L.Callback):
    """One row an epoch in ``history.csv``, written when the epoch (validation included) ends,
    just before the checkpoints are saved: they hold it, so a resumed run continues it."""

    def __init__(self, path: Path):
        self.path, self.rows, self._start = path, [], 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        (loss, acc), (val_loss, val_acc) = module.epoch_means("train"), module.epoch_means("val")
        groups = trainer.optimizers[0].param_groups
        body = [g for g in groups if g.get("name") != "head" and any(p.requires_grad for p in g["params"])]
        self.rows.append({
            "epoch": trainer.current_epoch + 1, "loss": loss, "accuracy": acc, "val_loss": val_loss,
            "val_accuracy": val_acc, "lr": groups[0]["lr"], "backbone_lr": body[-1]["lr"] if body else "",
            "trainable": count_params(module.model, trainable_only=True),
            "seconds": round(time.perf_counter() - self._start, 3),
        })
        buf = io.StringIO()
        writer = csv.DictWriter(buf, HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])


# --- runs ---------------------------------------------------------------------------------


@dataclass
class Run:
    """A finished (or interrupted) run: its folder, config, history and evaluation metrics."""

    dir: Path
    config: TrainConfig
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "last.ckpt"

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise TrainingError(f"{path} is not a headstart run (no config.yaml). Pass a folder under runs/.")
        history = []
        if (path / "history.csv").is_file():
            with (path / "history.csv").open() as f:
                history = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
        return cls(path, load_config(path / "config.yaml"), history, metrics)


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def data_fingerprint(ds: Dataset) -> str:
    import hashlib

    h = hashlib.sha256()
    for s in ds.samples:
        st = s.path.stat()
        h.update(f"{s.path}|{s.label}|{s.split}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _run_dir(cfg: TrainConfig) -> Path:
    root = Path(cfg.runs_dir)
    if cfg.name:
        path = root / cfg.name
        if path.exists():
            raise TrainingError(f"Run folder {path} already exists. Pick another --name, or --resume {path}.")
        return path
    base = f"{cfg.backbone}-{cfg.strategy}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return path


def _trainer(cfg: TrainConfig, run_dir: Path, progress: bool, callbacks: list) -> L.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    cbs = [ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_loss", mode="min",
                           save_last=True, enable_version_counter=False, save_on_train_epoch_end=True), *callbacks]
    if cfg.early_stopping:
        cbs.append(EarlyStopping(monitor="val_loss", mode="min", patience=cfg.early_stopping))
    if progress:
        cbs.append(RichProgressBar())
    precision = cfg.precision
    if precision == "auto":  # bf16 mixed precision where it pays: on a GPU
        precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    devices: Any = cfg.devices if cfg.devices == "auto" else int(cfg.devices) if cfg.devices.isdigit() else cfg.devices
    return L.Trainer(
        max_epochs=cfg.epochs, accelerator="auto", devices=devices, precision=precision,
        deterministic=cfg.deterministic, callbacks=cbs, logger=False, enable_progress_bar=progress,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(run_dir),
    )


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # resume
    # Frozen layers are in eval mode on purpose (their BatchNorm statistics must not move).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")


@torch.inference_mode()
def _predict(module: TransferModule, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and targets over a loader (images or features, as the module trains)."""
    module.eval()
    device = next(module.parameters()).device
    probs, targets = [], []
    for x, y in loader:
        probs.append(module(x.to(device)).float().softmax(1).cpu().numpy())
        targets.append(np.asarray(y))
    return np.concatenate(probs), np.concatenate(targets)


def _resume_config(run_dir: Path, overrides: dict, config_file: str | Path | None) -> TrainConfig:
    """The saved config of a run to resume; options asked for now must agree with it."""
    cfg = Run.load(run_dir).config
    asked = {**(read_yaml(config_file) if config_file else {}), **overrides}
    unknown = sorted(k for k in asked if not hasattr(cfg, k))
    if unknown:
        raise TrainingError(f"Unknown option(s): {', '.join(unknown)}.")
    diff = {k: (getattr(cfg, k), coerce(k, v)) for k, v in asked.items() if getattr(cfg, k) != coerce(k, v)}
    if diff:
        shown = ", ".join(f"{k}: the run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise TrainingError(f"Cannot resume {run_dir}: its config differs ({shown}). Resume without "
                            "those options, or start a new run.")
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise TrainingError(f"Cannot resume {run_dir}: it has no checkpoints/last.ckpt (it never finished an epoch).")
    return cfg


def _advised(cfg: TrainConfig, ds: Dataset, asked: dict | None, progress: bool) -> TrainConfig:
    """``--strategy auto``: the advice's strategy and settings, except those asked for explicitly
    (``asked``; None: everything was, e.g. a whole config passed in, so only the strategy is taken;
    so too with the seed recipe: the rest of it is the tutorial's)."""
    import dataclasses

    from headstart.advise import advise

    # Its own random state: an advised run trains exactly as one with the same strategy named.
    with torch.random.fork_rng(devices=[]):
        advice = advise(ds, cfg.backbone, cfg.weights, cfg.input_size, seed=cfg.seed, progress=progress,
                        decode_all=True)  # training reads the same cache next
    take_all = asked is not None and cfg.recipe != "seed"
    chosen = {k: v for k, v in advice.overrides().items() if k == "strategy" or (take_all and k not in asked)}
    log.info("auto: %s -> %s", advice.case, advice.strategy)
    return dataclasses.replace(cfg, **chosen, advice=advice.to_dict())


def _leading_frozen(model: Classifier) -> int:
    k = 0
    while k < len(model.groups) and not any(p.requires_grad for p in model.groups[k].params):
        k += 1
    return k


def _datasets(cfg: TrainConfig, model: Classifier, ds: Dataset, store: ImageStore, progress: bool):
    """Per split, what the trainer reads, and the trunk that turns it into pooled features:

    - ``features``: pooled features computed once; the trunk is nothing;
    - ``partial`` without augmentation: the frozen prefix's activations computed once (fp16);
      the trunk is the layers after it;
    - otherwise: the images; the trunk is the whole body.
    """
    splits = split_indices(ds)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def once(**kw) -> dict:
        out = {s: TensorDataset(extract_features(model, store, idx, device=device, progress=progress,
                                                 channels_last=cfg.channels_last, **kw),
                                torch.tensor(y)) for s, (idx, y) in splits.items()}
        model.cpu()
        return out

    if cfg.strategy == "features":
        if cfg.augment:
            log.info("features: augmentation is off, the backbone's features are computed once")
        return once(), nn.Identity()
    k = _leading_frozen(model)
    cut = model.split(k) if cfg.strategy in ("partial", "half") and cfg.cache_frozen and k else None
    if cut is not None and not cfg.augment:
        prefix, rest = cut
        log.info("%s: the %d frozen groups are computed once; epochs run the rest", cfg.strategy, k)
        return once(upto=prefix, dtype=CACHE_DTYPE), rest
    if cut is not None:
        log.warning("%s: augmentation is on, so the frozen layers run every epoch (--no-augment computes them once)",
                    cfg.strategy)
    images = {s: ImageSet(store, idx, y, augment=cfg.augment and s == "training", seed=cfg.seed)
              for s, (idx, y) in splits.items()}
    return images, None


def fit(
    data: str | Path | None = None,
    *,
    config: TrainConfig | None = None,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    callbacks: list | None = None,
    **overrides: Any,
) -> Run:
    """Train as ``headstart train`` does and return the run. Options as in ``TrainConfig``.

    ``resume`` continues an interrupted run from its ``last.ckpt``: its config and data must be
    the same (options passed here must agree with the saved config).
    """
    _quiet_lightning()
    if data is not None:
        overrides["data"] = str(data)
    if resume is not None:
        run_dir, cfg = Path(resume), _resume_config(Path(resume), overrides, config_file)
    else:
        cfg = config or resolve_config(overrides.get("recipe"), config_file, overrides)

    # Everything that can fail on bad input happens before the run folder is made.
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ds = load_dataset(cfg.data, cfg.layout, val_fraction=cfg.val_fraction, eval_fraction=cfg.eval_fraction, seed=cfg.seed)
    if cfg.strategy == "auto":
        asked = None if config is not None else {**(read_yaml(config_file) if config_file else {}), **overrides}
        cfg = _advised(cfg, ds, asked, progress)
    scratch = cfg.strategy == "scratch"
    model = create_model(cfg.backbone, ds.num_classes, weights="none" if scratch else cfg.weights,
                         head={"dropout": cfg.head_dropout, "hidden": cfg.head_hidden}, input_size=cfg.input_size)
    plan = S.apply_strategy(model, "full" if scratch else cfg.strategy, freeze=cfg.freeze, freeze_layers=cfg.freeze_layers)
    model.pretrained_bn_stats = cfg.pretrained_bn_stats and not scratch
    if cfg.channels_last:  # the weights in NHWC order too, for the frozen pass and for training
        model.to(memory_format=torch.channels_last)
    ds, store = decoded_images(ds, model.preprocessing, progress=progress)
    fingerprint = data_fingerprint(ds)
    if resume is not None:
        saved = json.loads((run_dir / "data.json").read_text()).get("fingerprint")
        if saved != fingerprint:
            raise TrainingError(f"Cannot resume {run_dir}: the data changed since it started (files added, removed "
                                "or modified). Start a new run.")
    else:
        run_dir = _run_dir(cfg)

    tensors, trunk = _datasets(cfg, model, ds, store, progress)
    train_set = tensors["training"]
    loaders = {
        s: DataLoader(t, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                      sampler=EpochSampler(t, cfg.seed) if s == "training" else None,
                      pin_memory=torch.cuda.is_available(), persistent_workers=cfg.num_workers > 0)
        for s, t in tensors.items()
    }
    steps = math.ceil(len(train_set) / cfg.batch_size)
    extra = {"classes": ds.classes, "strategy_plan": plan.__dict__}
    module = TransferModule(model, cfg, steps, extra, trunk)

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    data_info = {
        "root": str(ds.root), "layout": ds.layout, "classes": ds.classes, "counts": ds.counts(),
        "fingerprint": fingerprint, "problems": [{"path": str(p.path), "reason": p.reason} for p in ds.problems],
        "ignored": len(ds.ignored),
    }
    write_text(run_dir / "data.json", json.dumps(data_info, indent=2) + "\n")
    setup_seconds = time.perf_counter() - started  # reading, decoding (once), features (once)
    history = History(run_dir / "history.csv")
    trainer = _trainer(cfg, run_dir, progress, [history, *(callbacks or [])])
    sigint = signal.getsignal(signal.SIGINT)
    interrupted = False
    try:
        ckpt_path = run_dir / "checkpoints" / "last.ckpt" if resume is not None else None
        trainer.fit(module, loaders["training"], loaders["validation"], ckpt_path=ckpt_path)
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful shutdown and then sys.exit(1); a library keeps going.
        if not trainer.interrupted:
            raise
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, sigint)
    run = Run(run_dir, cfg, history.rows, interrupted=interrupted)
    if interrupted:
        last = run.last_checkpoint
        if not last.exists():
            trainer.save_checkpoint(last)
        log.warning("Interrupted. Resume with: headstart train --resume %s", run_dir)
        return run

    best = trainer.checkpoint_callback.best_model_path
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    best_epoch = min(history.rows, key=lambda r: r["val_loss"])["epoch"] if history.rows else 0
    probs, targets = _predict(module, loaders["evaluation"])
    eval_idx = [i for i, s in enumerate(ds.samples) if s.split == "evaluation"]
    ev = compute(targets, probs, ds.classes, "evaluation", [str(ds.samples[i].path) for i in eval_idx])
    run.metrics = {"best_epoch": best_epoch, "epochs": len(history.rows),
                   "trainable_params": count_params(model, trainable_only=True), "strategy": cfg.strategy,
                   "backbone": cfg.backbone, "recipe": cfg.recipe, "skipped_images": len(ds.problems),
                   "setup_seconds": round(setup_seconds, 2),
                   "train_seconds": round(sum(r["seconds"] for r in history.rows), 2)}
    write_evaluation(ev, run_dir, run.metrics)
    run.metrics = {**run.metrics, **ev.to_dict()}
    write_run_report(run, ev, [store[i] for i in eval_idx], data_info)
    return run
