"""Training on Lightning: the tutorial's loop (fit, keep the best by validation loss or ``monitor``, evaluate),
for every strategy, with a run folder a person can browse (``headstart.runs``).

>>> run = fit("demo", strategy="features", input_size=96, epochs=5)
>>> run.metrics["accuracy"], run.metrics["correct"], run.metrics["total"]   # doctest: +SKIP
(0.78, 234, 300)

``fit`` reads top to bottom: prepare the data and the model (decoding and the frozen pass happen
once), train, evaluate the best checkpoint, write the report.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from headstart import strategies as S
from headstart.advice import advised_config, warn_input_size
from headstart.backbones import Classifier, count_params, create_model
from headstart.cache import decoded_images
from headstart.config import TrainConfig, as_trained, read_yaml, resolve_config
from headstart.data import Dataset, load_dataset_for
from headstart.distributed import Ranks, launch, parse_devices, precision
from headstart._files import check_writable_dir
from headstart.errors import ConfigError
from headstart.evaluation import compute, write_evaluation
from headstart.frozen import (
    EpochSampler, RankBatches, memory_layout, mirrored_inputs, seed_of, split_indices, training_inputs,
)
from headstart.imbalance import MODE, best_epoch, confusion, loss_weights, macro_f1
from headstart.keras_numerics import KerasAdam, train_loss
from headstart.loggers import loggers
from headstart.progress import in_terminal, quiet_lightning
from headstart.progress import log as progress_log
from headstart.report import write_run_report
from headstart.runs import BEST, Run, read_checkpoint
from headstart.tuning import Averaging, lr_lambda
from headstart.views import view_inputs, view_metrics

log = logging.getLogger(__name__)


# --- the Lightning module -----------------------------------------------------------------


class TransferModule(L.LightningModule):
    """The model, its loss, optimizer and schedule, on images or on what frozen layers made of them."""

    def __init__(self, model: Classifier, cfg: TrainConfig, steps_per_epoch: int, extra: dict, trunk=None,
                 train_size: int = 0, class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model, self.cfg, self.train_size = model, cfg, train_size
        # What turns a batch into pooled features: the whole body on images; nothing on cached
        # features; the layers after the frozen prefix on its cached activations.
        self.trunk = trunk or model.forward_features
        self.steps_per_epoch, self.extra = steps_per_epoch, extra
        # Class weights (imbalance.class_weights) scale each image's loss; the batch's loss is the mean
        # over its images, as Keras' class_weight does (not over their weights, as PyTorch's "mean"):
        # each rank's share is then a plain mean, and training_step's weighing by share size holds.
        self.train_loss_fn = train_loss(cfg.loss, class_weights, cfg.label_smoothing)  # torch's, or Keras' (seed)
        self.eval_loss_fn = nn.CrossEntropyLoss()  # plain, so val_loss compares across recipes
        self.epoch_stats = {"train": torch.zeros(3), "val": torch.zeros(3)}  # loss sum, correct, count
        self.val_confusion, self.val_macro_f1 = None, 0.0  # over every rank's validation images
        self._forward = torch.compile(self._plain_forward) if cfg.compile else self._plain_forward

    def _plain_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.trunk(memory_layout(x.float(), self.cfg.channels_last)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def train_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.train_loss_fn(logits, y).mean()

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.train_loss(logits, y) if stage == "train" else self.eval_loss_fn(logits, y)
        correct = (logits.argmax(1) == y).sum()
        if stage == "val":
            seen = confusion(y, logits.argmax(1), logits.shape[1])
            self.val_confusion = seen if self.val_confusion is None else self.val_confusion + seen
        if stage == "train":  # this rank's, for the progress bar; the epoch's figures are summed over the ranks
            self.log("batch_loss", loss, prog_bar=True, logger=False)
        # Epoch sums of our own (loss, correct, count), added up over the ranks at the epoch's end.
        stats = self.epoch_stats[stage]
        stats += torch.stack([loss.detach().float() * len(y), correct.float(), torch.tensor(float(len(y)), device=y.device)])
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        world = self.trainer.world_size
        if world > 1 and self.train_size:
            # DDP averages the ranks' gradients, each rank's loss a mean over its share: weigh each
            # share by its size, so the step is the whole global batch's mean even when it does
            # not split evenly (a batch of 7 on 2 ranks; the last, smaller batch of an epoch).
            whole = max(min(self.cfg.batch_size, self.train_size - batch_idx * self.cfg.batch_size), world)
            loss = loss * (len(batch[1]) * world / whole)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self.epoch_stats["val"] = torch.zeros(3, device=self.device)
        self.val_confusion = None

    def on_train_epoch_end(self) -> None:
        # For the loggers: the epoch's figures over every rank's samples (history.csv has the same).
        loss, accuracy = self.epoch_means("train")
        self.log("loss", loss)
        self.log("accuracy", accuracy)

    def on_validation_epoch_end(self) -> None:
        # What early stopping and the best checkpoint go by: the same figure on every rank.
        loss, accuracy = self.epoch_means("val")
        # Macro F1 over the whole validation split: the ranks' confusion matrices summed first.
        self.val_macro_f1 = macro_f1(self.trainer.strategy.reduce(self.val_confusion.clone(), reduce_op="sum"))
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_accuracy", accuracy, prog_bar=True)
        self.log("val_macro_f1", self.val_macro_f1)

    def epoch_means(self, stage: str) -> tuple[float, float]:
        """Mean loss and accuracy of the current epoch so far, over every rank's samples (every
        rank must ask: it is a collective)."""
        loss, correct, n = self.trainer.strategy.reduce(self.epoch_stats[stage].clone(), reduce_op="sum").tolist()
        return loss / max(n, 1), correct / max(n, 1)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Dropout draws from a generator seeded by (seed, epoch, batch[, rank]): resuming repeats it exactly.
        rank = (self.global_rank,) if self.trainer.world_size > 1 else ()
        torch.manual_seed(seed_of(self.cfg.seed, self.current_epoch, batch_idx, *rank))

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
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                "keras_adam": KerasAdam}[cfg.optimizer]
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

    def __init__(self, run: Run, lines: bool = False):
        # lines: also one line an epoch on the progress logger (off a terminal, where there is no bar)
        self.run, self.lines, self.rows, self._start = run, lines, [], 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        (loss, acc), (val_loss, val_acc) = module.epoch_means("train"), module.epoch_means("val")
        groups = trainer.optimizers[0].param_groups
        body = [g for g in groups if g.get("name") != "head" and any(p.requires_grad for p in g["params"])]
        self.rows.append({
            "epoch": trainer.current_epoch + 1, "loss": loss, "accuracy": acc, "val_loss": val_loss,
            "val_accuracy": val_acc, "val_macro_f1": module.val_macro_f1, "lr": groups[0]["lr"],
            "backbone_lr": body[-1]["lr"] if body else "",
            "trainable": count_params(module.model, trainable_only=True),
            "seconds": round(time.perf_counter() - self._start, 3),
        })
        if trainer.is_global_zero:
            self.run.write_history(self.rows)
            if self.lines:
                r = self.rows[-1]
                progress_log.info("epoch %d/%d: loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy %.4f, %.1f s",
                                  r["epoch"], trainer.max_epochs, loss, acc, val_loss, val_acc, r["seconds"])

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])


# --- the steps of fit ---------------------------------------------------------------------


def _config(data, config: TrainConfig | None, config_file, resume, overrides: dict) -> tuple[TrainConfig, dict | None, Run | None]:
    """The run's config; what was asked for explicitly (None: a whole config was passed in); the run to resume."""
    if data is not None:
        overrides["data"] = str(data)
    from_file = read_yaml(config_file) if config_file else {}
    if data is None and resume is None and config is None and "data" not in from_file:
        raise ConfigError("Pass DATA (a dataset folder, a CSV manifest or 'demo'), --resume RUN, or a --config "
                          "that says data: (a run's own config.yaml does).")
    asked = None if config is not None else {**from_file, **overrides}
    if resume is not None:
        run = Run.resume(resume, asked or {})
        return run.config, asked, run
    return config or resolve_config(overrides.get("recipe"), config_file, overrides), asked, None


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[Classifier, S.StrategyPlan]:
    """The backbone with its head, frozen as the strategy says (``scratch``: random weights, all trained)."""
    scratch = cfg.strategy == "scratch"
    head = {"dropout": cfg.head_dropout, "hidden": cfg.head_hidden, "init": cfg.head_init}
    model = create_model(cfg.backbone, num_classes, weights="none" if scratch else cfg.weights, head=head,
                         input_size=cfg.input_size)
    plan = S.apply_strategy(model, "full" if scratch else cfg.strategy, freeze=cfg.freeze, freeze_layers=cfg.freeze_layers)
    model.pretrained_bn_stats = cfg.pretrained_bn_stats and not scratch
    if cfg.channels_last:  # the weights in NHWC order too, for the frozen pass and for training
        model.to(memory_format=torch.channels_last)
    return model, plan


def _loaders(cfg: TrainConfig, inputs: dict, ranks: Ranks, labels: list[int]) -> dict[str, DataLoader]:
    """Batches of each split for this rank: training in the seeded order of ``EpochSampler`` (balanced
    by the training ``labels`` if asked), each global batch shared among the ranks; validation shared
    out too; evaluation whole (rank 0's)."""
    kw = dict(num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=cfg.num_workers > 0)
    train, val = inputs["training"], inputs["validation"]
    if len(val) < ranks.world:  # a rank with no validation batch would skip the epoch's sums and leave the others waiting
        raise ConfigError(f"The validation split has {len(val)} image(s), fewer than the {ranks.world} processes. "
                          "Use fewer --devices, or more validation images.")
    order = EpochSampler(train, cfg.seed, labels if cfg.sampler == "balanced" else None)
    batches = RankBatches(order, cfg.batch_size, ranks.rank, ranks.world)
    return {"training": DataLoader(train, batch_sampler=batches, **kw),
            "validation": DataLoader(Subset(val, ranks.share(len(val))), batch_size=math.ceil(cfg.batch_size / ranks.world), **kw),
            "evaluation": DataLoader(inputs["evaluation"], batch_size=cfg.batch_size, **kw)}


class _Checkpoint(ModelCheckpoint):
    """Lightning's, with the paths it keeps in a checkpoint re-based on resume: a run folder moved
    or copied elsewhere resumes from, and keeps choosing among, its own checkpoints."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        old, new = state.get("dirpath"), self.dirpath

        def rebase(path):
            return str(Path(new) / Path(path).relative_to(old)) if path and Path(path).is_relative_to(old) else path

        if old and old != new:
            state = {**state, "dirpath": new, **{k: rebase(state.get(k)) for k in
                                                 ("best_model_path", "kth_best_model_path", "last_model_path")},
                     "best_k_models": {rebase(k): v for k, v in state.get("best_k_models", {}).items()}}
        super().load_state_dict(state)

    def on_train_epoch_end(self, trainer, module) -> None:
        # Lightning 2.6 writes last.ckpt only on the epochs that write best.ckpt: after a worse epoch
        # (or one that early stopping ends) a resume would go back to the best one and train again.
        # Asked before the parent saves: once it has, the step counts as saved.
        due = not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, module)
        if due and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class _Bar(RichProgressBar):
    """Lightning's progress bar, with epochs counted from 1 as everywhere else in headstart."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Epoch {current_epoch + 1}/{self.trainer.max_epochs}"


def _trainer(cfg: TrainConfig, run: Run, ranks: Ranks, progress: bool, callbacks: list, logger=None) -> L.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping

    best = dict(monitor=cfg.monitor, mode=MODE[cfg.monitor])  # val_loss lowest; val_accuracy, val_macro_f1 highest
    cbs = [_Checkpoint(dirpath=run.checkpoints, filename=BEST, save_last=True, enable_version_counter=False,
                       save_on_train_epoch_end=True, **best), *callbacks]
    if cfg.average != "none":  # validation and the checkpoints see the averaged weights
        cbs.insert(0, Averaging(cfg.average))
    if cfg.early_stopping:
        cbs.append(EarlyStopping(patience=cfg.early_stopping, **best))
    bar = progress and in_terminal()  # off a terminal, History prints a line an epoch instead
    if bar:
        cbs.append(_Bar())
    return L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=parse_devices(cfg.devices), num_nodes=cfg.num_nodes,
        strategy="ddp" if ranks.world > 1 else "auto", use_distributed_sampler=False,  # RankBatches shares them out
        precision=precision(cfg.precision), deterministic=cfg.deterministic, callbacks=cbs, enable_progress_bar=bar,
        logger=[*loggers(cfg.loggers, run.dir), *(logger if isinstance(logger, (list, tuple)) else [logger] if logger else [])] or False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(run.dir),
    )


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


def _train(trainer: L.Trainer, module: TransferModule, loaders: dict, run: Run, resume: bool) -> bool:
    """Train (from the run's ``last.ckpt`` when resuming); True when interrupted (Ctrl-C), with a
    ``last.ckpt`` to resume from."""
    try:
        trainer.fit(module, loaders["training"], loaders["validation"], weights_only=True,
                    ckpt_path=run.last_checkpoint if resume and run.last_checkpoint.exists() else None)
    except SystemExit:
        # On Ctrl-C Lightning stops gracefully, then calls sys.exit(1): a library returns instead.
        if not trainer.interrupted:
            raise
        if not run.last_checkpoint.exists() and trainer.world_size == 1:  # with ranks, some may be gone already
            trainer.save_checkpoint(run.last_checkpoint)
        if trainer.is_global_zero:
            log.warning("Interrupted. %s", f"Resume with: headstart train --resume {run.dir}" if run.last_checkpoint.exists()
                        else "No epoch had finished: nothing to resume.")
        return True
    return False


def _evaluate_best(run: Run, trainer: L.Trainer, module: TransferModule, loader: DataLoader, ds: Dataset,
                   setup_seconds: float, store=None, recorded: dict | None = None):
    """The best checkpoint on the evaluation split, read as training read it (features, activations
    or images): the tutorial's accuracy, number correct and confusion matrix, and more; with
    ``tta``, also averaged with the mirror images (the plain figures stay the headline). ``recorded``:
    more figures of the run for its metrics (augmented views: ``headstart.views.view_metrics``)."""
    module.load_state_dict(read_checkpoint(run.best_checkpoint)["state_dict"])
    probs, targets = _predict(module, loader)
    tta = None
    if run.config.tta:
        mirrored = mirrored_inputs(run.config, module.model, loader, ds, store, trainer.strategy.root_device)
        tta = np.stack([probs, _predict(module, mirrored)[0]]).mean(0)  # as headstart.predict.predict_probs
    paths = [str(s.path) for s in ds.split("evaluation")]
    ev = compute(targets, probs, ds.classes, "evaluation", paths, tta)
    rows, weights = run.history, module.train_loss_fn.weight
    run.metrics = {"best_epoch": best_epoch(rows, run.config.monitor), "epochs": len(rows),
                   "trainable_params": count_params(module.model, trainable_only=True), "strategy": run.config.strategy,
                   "backbone": run.config.backbone, "recipe": run.config.recipe, "average": run.config.average,
                   "skipped_images": len(ds.problems),
                   "setup_seconds": round(setup_seconds, 2), "train_seconds": round(sum(r["seconds"] for r in rows), 2),
                   **(recorded or {})}
    if weights is not None:  # class_weights=auto: what each class's loss was weighted by
        run.metrics["class_weights"] = {c: round(float(w), 4) for c, w in zip(ds.classes, weights.tolist())}
    write_evaluation(run, ev, run.metrics)
    run.metrics = {**run.metrics, **ev.to_dict()}
    return ev


def fit(data: str | Path | None = None, *, config: TrainConfig | None = None, config_file: str | Path | None = None,
        resume: str | Path | None = None, progress: bool = False, callbacks: list | None = None, logger: Any = None,
        _lr_find_only: bool = False, **overrides: Any) -> Run:
    """Train as ``headstart train`` does and return the run. Options as in ``TrainConfig``;
    ``logger``: Lightning loggers of your own, beside ``loggers=["tensorboard", ...]``.

    ``resume`` continues an interrupted run from its ``last.ckpt``: its config and data must be
    the same (options passed here must agree with the saved config).
    """
    quiet_lightning()
    started = time.perf_counter()
    # 1. Prepare the data and the model. Everything that can fail on bad input happens before
    #    the run folder is made; images are decoded once, the frozen pass is computed once.
    cfg, asked, resumed = _config(data, config, config_file, resume, overrides)
    check_writable_dir(resumed.dir if resumed else cfg.runs_dir, "The run folder" if resumed else "--runs-dir")
    ranks = launch(cfg.accelerator, parse_devices(cfg.devices), cfg.num_nodes)  # one process per device
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ds = load_dataset_for(cfg)
    if "auto" in (cfg.strategy, cfg.input_size):  # measured once, on rank 0
        cfg = ranks.on_zero(lambda: advised_config(cfg, ds, asked, progress))
    cfg = as_trained(cfg)
    model, plan = build_model(cfg, ds.num_classes)
    if ranks.is_zero:
        warn_input_size(cfg, model.body.preprocessing.input_size)  # well below the weights' own size?
    ds, store = decoded_images(ds, model.preprocessing, progress=progress and ranks.is_zero)
    run = resumed.check_same_data(ds) if resumed else ranks.on_zero(lambda: Run.create(cfg))
    inputs, trunk = view_inputs(cfg, model, ds, store, progress, ranks) or training_inputs(cfg, model, ds, store, progress, ranks)
    labels = split_indices(ds)["training"][1]
    loaders = _loaders(cfg, inputs, ranks, labels)
    module = TransferModule(model, cfg, len(loaders["training"]), {"classes": ds.classes, "strategy_plan": plan.__dict__},
                            trunk, len(inputs["training"]), loss_weights(cfg, labels, ds.num_classes))
    if cfg.lr_find and not resumed:  # the range test first: config.yaml records the rate it found
        from headstart.lr_finder import tune
        found, cfg = tune(module, loaders["training"], ranks.world, progress)
        if _lr_find_only:
            return found
        run.config = cfg
    # Rank 0 makes and claims the folder (its name may change if another run took it meanwhile).
    data_info, run.dir = ranks.on_zero(lambda: (run.start(ds, resumed is not None), run.dir))
    if cfg.lr_find and not resumed:
        found.save(run.lr_find_file)  # the curve; the report draws it
    try:
        setup_seconds = time.perf_counter() - started
        # 2. Train, keeping the best epoch by the monitored validation figure (val_loss by default).
        history = History(run, lines=progress and not in_terminal())
        trainer = _trainer(cfg, run, ranks, progress, [history, *(callbacks or [])], logger)
        run.interrupted = _train(trainer, module, loaders, run, resumed is not None)
        run.history = history.rows
        if run.interrupted or not ranks.is_zero:
            return run
        # 3. Evaluate the best checkpoint (once, on rank 0); 4. write the report.
        ev = _evaluate_best(run, trainer, module, loaders["evaluation"], ds, setup_seconds, store,
                            view_metrics(cfg, inputs["training"]))
        write_run_report(run, ev, [store[i] for i in split_indices(ds)["evaluation"][0]], data_info)
        return run
    finally:
        run.release()  # the folder is free for a --resume


def find_lr(data: str | Path | None = None, *, progress: bool = False, **options: Any):
    """``headstart lr-find``: the learning-rate range test (``headstart.lr_finder.LRFind``) on the model
    and batches ``fit`` would train with these options; nothing is written."""
    return fit(data, progress=progress, _lr_find_only=True, **{**options, "lr_find": True})
