"""Training on Lightning: the tutorial's loop (fit, keep the best by validation loss or ``monitor``, evaluate),
for every strategy, with a run folder a person can browse (``headstart.runs.folder``).

>>> run = fit("demo", strategy="features", input_size=96, epochs=5)
>>> run.metrics["accuracy"], run.metrics["correct"], run.metrics["total"]   # doctest: +SKIP
(0.78, 234, 300)

``fit`` reads top to bottom: prepare the data and the model (decoding and the frozen pass happen
once), train, evaluate the best checkpoint, write the report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from headstart.advice.input_size import warn_input_size
from headstart.advice.strategy import advised_config
from headstart.config import TrainConfig, as_trained, read_yaml, resolve_config
from headstart.data.cache import decoded_images
from headstart.data.dataset import Dataset, load_dataset_for, split_indices
from headstart.data.samplers import EpochSampler, RankBatches
from headstart.engines.choice import Engine
from headstart.errors import ConfigError
from headstart.evaluation.evaluate import compute, write_evaluation
from headstart.evaluation.metrics import best_epoch
from headstart.evaluation.multilabel import compute_multilabel
from headstart.inference.explain import class_maps, overlay
from headstart.models import strategies as S
from headstart.models.classifier import Classifier, HeadConfig, count_params
from headstart.models.factory import create_model
from headstart.reporting.report import WRONG_SHOWN, write_run_report
from headstart.runs.checkpoints import read_checkpoint
from headstart.runs.folder import Run
from headstart.training.augmented_views import view_inputs, view_metrics
from headstart.training.callbacks import History
from headstart.training.distributed import Ranks, launch, parse_devices
from headstart.training.frozen_pass import frozen_rows, mirrored_inputs, training_inputs
from headstart.training.head_search import HeadSearch, new_head, new_shape, search_heads, searched
from headstart.training.losses import loss_weights
from headstart.training.lr_finder import LRFind, tune
from headstart.training.module import TransferModule, _predict
from headstart.training.trainer import _trainer
from headstart.utils.files import check_writable_dir
from headstart.utils.progress import in_terminal, quiet_lightning

log = logging.getLogger(__name__)


# --- the steps of fit ---------------------------------------------------------------------


def _config(
    data, config: TrainConfig | None, config_file, resume, overrides: dict
) -> tuple[TrainConfig, dict | None, Run | None]:
    """The run's config; what was asked for explicitly (None: a whole config was passed in); the run to resume."""
    if data is not None:
        overrides["data"] = str(data)
    from_file = read_yaml(config_file) if config_file else {}
    if data is None and resume is None and config is None and "data" not in from_file:
        raise ConfigError(
            "Pass DATA (a dataset folder, a CSV manifest or 'demo'), --resume RUN, or a --config "
            "that says data: (a run's own config.yaml does)."
        )
    asked = None if config is not None else {**from_file, **overrides}
    if resume is not None:
        run = Run.resume(resume, asked or {})
        return run.config, asked, run
    return config or resolve_config(overrides.get("recipe"), config_file, overrides), asked, None


def for_task(cfg: TrainConfig, task: str, asked: Container[str] | None = None) -> TrainConfig:
    """The config for data of ``task`` (single or multi, as read): ``task`` set; multi-label data monitors
    ``val_map`` unless ``monitor`` was asked for (``asked``: the options asked for explicitly; None: a whole
    config, kept as it is), and trains the head as given (the head search scores single-label heads)."""
    if task == "single":
        if cfg.monitor == "val_map":
            raise ConfigError(
                "monitor val_map is the mean average precision of multi-label data; this data has one class an "
                "image. Received: monitor='val_map'. Use val_loss, val_accuracy or val_macro_f1."
            )
        return dataclasses.replace(cfg, task=task)
    if cfg.sampler == "balanced":
        raise ConfigError(
            "sampler balanced draws every class equally often, which multi-label images (several classes each) "
            "cannot be. Received: sampler='balanced' with multi-label data. Use --class-weights auto (each "
            "class's positives weighted by its negatives over its positives)."
        )
    # A whole config given (asked None: a Python TrainConfig) keeps its monitor, as a run's config.yaml does.
    default = asked is not None and "monitor" not in asked and cfg.monitor == "val_loss"
    monitor = "val_map" if default else cfg.monitor
    return dataclasses.replace(cfg, task=task, monitor=monitor, head_search="off")


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[Classifier, S.StrategyPlan]:
    """The backbone with its head, frozen as the strategy says (``scratch``: random weights, all trained)."""
    scratch = cfg.strategy == "scratch"
    head = {"dropout": cfg.head_dropout, "hidden": cfg.head_hidden, "init": cfg.head_init}
    model = create_model(
        cfg.backbone, num_classes, weights="none" if scratch else cfg.weights, head=head, input_size=cfg.input_size
    )
    plan = S.apply_strategy(
        model, "full" if scratch else cfg.strategy, freeze=cfg.freeze, freeze_layers=cfg.freeze_layers
    )
    model.pretrained_bn_stats = cfg.pretrained_bn_stats and not scratch
    if cfg.channels_last:  # the weights in NHWC order too, for the frozen pass and for training
        model.to(memory_format=torch.channels_last)
    return model, plan


def _loaders(cfg: TrainConfig, inputs: dict, ranks: Ranks, labels: list[int]) -> dict[str, DataLoader]:
    """Batches of each split for this rank: training in the seeded order of ``EpochSampler`` (balanced
    by the training ``labels`` if asked), each global batch shared among the ranks (streamed training images:
    LitData's order and shares); validation shared out too; evaluation whole (rank 0's)."""
    kw = dict(num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(), persistent_workers=cfg.num_workers > 0)
    train, val = inputs["training"], inputs["validation"]
    if (
        len(val) < ranks.world
    ):  # a rank with no validation batch would skip the epoch's sums and leave the others waiting
        raise ConfigError(
            f"The validation split has {len(val)} image(s), fewer than the {ranks.world} processes. "
            "Use fewer --devices, or more validation images."
        )
    if hasattr(train, "state_dict"):  # streamed (LitData): it shuffles and shares out itself, and keeps its place
        batches = {"training": _streamed_loader(cfg, train, ranks, kw)}
    else:
        batches = {"training": DataLoader(train, batch_sampler=_batches(cfg, train, ranks, labels), **kw)}
    return {
        **batches,
        "validation": DataLoader(
            Subset(val, ranks.share(len(val))), batch_size=math.ceil(cfg.batch_size / ranks.world), **kw
        ),
        "evaluation": DataLoader(inputs["evaluation"], batch_size=cfg.batch_size, **kw),
    }


def _batches(cfg: TrainConfig, train, ranks: Ranks, labels) -> RankBatches:
    order = EpochSampler(train, cfg.seed, labels if cfg.sampler == "balanced" else None)
    if cfg.optimizer == "lbfgs":  # every rank steps on the whole split (TransferModule.full_batch)
        return RankBatches(order, len(train))
    return RankBatches(order, cfg.batch_size, ranks.rank, ranks.world)


def _streamed_loader(cfg: TrainConfig, train, ranks: Ranks, kw: dict):
    """LitData's loader for training images streamed from shards: each rank a share of the global batch, and
    its place in the epoch saved in every checkpoint (Lightning saves a loader's ``state_dict``)."""
    from litdata import StreamingDataLoader

    for asked, why in (
        (cfg.sampler == "balanced", "sampler balanced draws images by class, which a stream cannot"),
        (cfg.optimizer == "lbfgs", "optimizer lbfgs steps on the whole split at once"),
    ):
        if asked:
            raise ConfigError(
                f"{why}; this run streams its training images from prepared shards. Use --sampler random and "
                "another optimizer, or train on the image files."
            )
    return StreamingDataLoader(train, batch_size=math.ceil(cfg.batch_size / ranks.world), **kw)


def _train(trainer: L.Trainer, module: TransferModule, loaders: dict, run: Run, resume: bool) -> bool:
    """Train (from the run's ``last.ckpt`` when resuming); True when interrupted (Ctrl-C). A run stopped
    in its first epoch has no ``last.ckpt``: resuming it starts it over, in place (a checkpoint from the
    middle of an epoch would resume a loader that cannot be resumed)."""
    try:
        trainer.fit(
            module,
            loaders["training"],
            loaders["validation"],
            weights_only=True,
            ckpt_path=run.last_checkpoint if resume and run.last_checkpoint.exists() else None,
        )
    except SystemExit:
        # On Ctrl-C Lightning stops gracefully, then calls sys.exit(1): a library returns instead.
        if not trainer.interrupted:
            raise
        if trainer.is_global_zero:
            log.warning(
                "Interrupted. %s",
                f"Resume with: headstart train --resume {run.dir}"
                if run.last_checkpoint.exists()
                else f"No epoch had finished: headstart train --resume {run.dir} starts the run over, in place.",
            )
        return True
    return False


@dataclass
class Prepared:
    """Everything training needs, made before anything is written: the config, the processes, the
    data (decoded once), the model, what each epoch reads (the frozen pass done once) and its batches."""

    cfg: TrainConfig
    ranks: Ranks
    ds: Dataset
    store: Any  # the decoded images (headstart.data.cache.ImageStore)
    inputs: dict
    loaders: dict[str, DataLoader]
    module: TransferModule
    run: Run
    resumed: bool
    engine: Engine  # what ran the frozen pass (``engine.used``)
    head_search: HeadSearch | None = None  # the heads tried before training (head_search: auto), on rank 0


def _prepare(data, config, config_file, resume, overrides: dict, progress: bool, writes: bool = True) -> Prepared:
    """Everything that can fail on bad input happens here, before the run folder is made (``writes``:
    a run will be written; the learning-rate finder alone writes nothing)."""
    cfg, asked, resumed = _config(data, config, config_file, resume, overrides)
    if writes:
        check_writable_dir(resumed.dir if resumed else cfg.runs_dir, "The run folder" if resumed else "--runs-dir")
        if not resumed and cfg.name:
            Run.create(cfg)  # a --name already taken is refused now, not after the decoding
    ranks = launch(cfg.accelerator, parse_devices(cfg.devices), cfg.num_nodes)  # one process per device
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ds = load_dataset_for(cfg)
    if not resumed:  # single or multi-label, as the data is (a resumed run's config says so already)
        cfg = for_task(cfg, ds.task, asked)
    if ds.stream is not None and cfg.input_size in (None, "auto"):  # prepared shards: at the size they were made
        cfg = dataclasses.replace(cfg, input_size=ds.stream.preprocessing.input_size)
    if "auto" in (cfg.strategy, cfg.input_size):  # measured once, on rank 0
        cfg = ranks.on_zero(lambda: advised_config(cfg, ds, asked, progress))
    cfg = as_trained(cfg)
    engine = Engine(cfg.engine, cfg.engine_precision)
    engine.candidates(ranks.device)  # an engine that is not installed, or bf16 without bf16 units: now, not later
    model, plan = build_model(cfg, ds.num_classes)
    if ranks.is_zero:
        warn_input_size(cfg, model.body.preprocessing.input_size)  # well below the weights' own size?
    ds, store = decoded_images(ds, model.preprocessing, progress=progress and ranks.is_zero)
    run = resumed.check_same_data(ds) if resumed else ranks.on_zero(lambda: Run.create(cfg))
    inputs, trunk = view_inputs(cfg, model, ds, store, progress, ranks, engine) or training_inputs(
        cfg, model, ds, store, progress, ranks, engine
    )
    labels = split_indices(ds)["training"][1]
    weights = loss_weights(cfg, labels, ds.num_classes)
    found = None
    if searched(cfg) and not resumed:  # a few heads fitted on the cached features; the run trains the best
        found = _search_head(cfg, model, ds, store, inputs, ranks, progress, engine, weights, labels)
        cfg = run.config = _chosen(cfg, model, found)
    loaders = _loaders(cfg, inputs, ranks, labels)
    module = TransferModule(
        model,
        cfg,
        len(loaders["training"]),
        {"classes": ds.classes, "strategy_plan": plan.__dict__},
        trunk,
        len(inputs["training"]),
        weights,
    )
    return Prepared(cfg, ranks, ds, store, inputs, loaders, module, run, resumed is not None, engine, found)


def _search_head(cfg, model, ds, store, inputs, ranks, progress, engine, weights, labels) -> HeadSearch:
    """The head search (``headstart.training.head_search``) on rank 0, its result on every rank: on the
    features the run trains on; for ``gradual``, which trains on images, on the body's features, computed
    once for it (and kept on disk, as every frozen pass)."""
    if cfg.strategy == "features":
        train, val = inputs["training"], inputs["validation"]
    else:
        splits = split_indices(ds)
        train, val = (
            TensorDataset(
                frozen_rows(cfg, model, store, splits[s][0], ranks, progress, s, engine=engine),
                torch.tensor(splits[s][1]),
            )
            for s in ("training", "validation")
        )
        model.cpu()
    progress = progress and ranks.is_zero
    return ranks.on_zero(
        lambda: search_heads(cfg, train, val, ds.num_classes, weights, labels, progress, start=model.head)
    )


def _chosen(cfg: TrainConfig, model: Classifier, found: HeadSearch) -> TrainConfig:
    """The config the run trains with, and its head. ``features`` takes the chosen candidate's settings and
    trains it as the search did (the same initial weights, batches and dropout draws); ``gradual`` takes its
    shape and its trained weights, and its warm-up goes on from them."""
    chosen = found.chosen
    if cfg.strategy == "features":
        cfg = dataclasses.replace(cfg, **chosen.overrides, head_choice=found.to_dict())
        if new_shape(chosen.overrides):  # else the run's own head, as built: the candidate started from it
            shape = HeadConfig(cfg.head_dropout, cfg.head_hidden, cfg.head_init)
            model.replace_head(shape, new_head(cfg, model.num_features, model.config["num_classes"]))
        return cfg
    shape = {k: v for k, v in chosen.overrides.items() if k in ("head_hidden", "head_dropout")}
    cfg = dataclasses.replace(cfg, **shape, head_choice=found.to_dict({**shape, "head_weights": "trained"}))
    model.replace_head(HeadConfig(cfg.head_dropout, cfg.head_hidden, cfg.head_init), chosen.head)
    return cfg


def _evaluate_best(run: Run, trainer: L.Trainer, p: Prepared, setup_seconds: float):
    """The best checkpoint on the evaluation split, read as training read it (features, activations
    or images): the tutorial's accuracy, number correct and confusion matrix, and more; with
    ``tta``, also averaged with the mirror images (the plain figures stay the headline)."""
    module, loader, ds = p.module, p.loaders["evaluation"], p.ds
    best = read_checkpoint(run.best_checkpoint)
    module.load_state_dict(best["state_dict"])
    probs, targets = _predict(module, loader)
    tta = None
    if run.config.tta:
        mirrored = mirrored_inputs(
            run.config, module.model, loader, ds, p.store, trainer.strategy.root_device, p.engine
        )
        tta = np.stack([probs, _predict(module, mirrored)[0]]).mean(0)  # as headstart.inference.predict.predict_probs
    paths = [str(s.path) for s in ds.split("evaluation")]
    if ds.multi_label:  # at the thresholds chosen on validation with the best epoch's weights (its checkpoint's)
        ev = compute_multilabel(
            targets, probs, ds.classes, best["headstart"].get("thresholds"), "evaluation", paths, tta
        )
    else:
        ev = compute(targets, probs, ds.classes, "evaluation", paths, tta)
    rows, weights = run.history, module.train_loss_fn.weight
    run.metrics = {
        "best_epoch": best_epoch(rows, run.config.monitor),
        "epochs": len(rows),
        "trainable_params": count_params(module.model, trainable_only=True),
        "strategy": run.config.strategy,
        "backbone": run.config.backbone,
        "recipe": run.config.recipe,
        "average": run.config.average,
        "skipped_images": len(ds.problems),
        "setup_seconds": round(setup_seconds, 2),
        "train_seconds": round(sum(r["seconds"] for r in rows), 2),
        **view_metrics(run.config, p.inputs["training"]),  # augmented views: their K and bytes
        **({"frozen_pass": p.engine.used} if p.engine.used else {}),  # the engine that ran it, parity error
        **({"head_search": run.config.head_choice} if run.config.head_choice else {}),  # the heads tried first
    }
    if weights is not None:  # class_weights=auto: what each class's loss was weighted by
        run.metrics["class_weights"] = {c: round(float(w), 4) for c, w in zip(ds.classes, weights.tolist())}
    write_evaluation(run, ev, run.metrics)
    run.metrics = {**run.metrics, **ev.to_dict()}
    return ev


def fit(
    data: str | Path | None = None,
    *,
    config: TrainConfig | None = None,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    callbacks: list | None = None,
    logger: Any = None,
    **overrides: Any,
) -> Run:
    """Train as ``headstart train`` does and return the run. Options as in ``TrainConfig``;
    ``logger``: Lightning loggers of your own, beside ``loggers=["tensorboard", ...]``.

    ``resume`` continues an interrupted run from its ``last.ckpt``: its config and data must be
    the same (options passed here must agree with the saved config).
    """
    quiet_lightning()
    started = time.perf_counter()
    # 1. Prepare the data and the model: images are decoded once, the frozen pass is computed once.
    p = _prepare(data, config, config_file, resume, overrides, progress)
    found = _find_lr(p, progress) if p.cfg.lr_find and not p.resumed else None  # config.yaml records the rate
    run = p.run
    # Rank 0 makes and claims the folder (its name may change if another run took it meanwhile).
    data_info, run.dir = p.ranks.on_zero(lambda: (run.start(p.ds, p.resumed), run.dir))
    try:
        if p.ranks.is_zero:
            _save_lr_curve(run, found)  # the finder's curve, for the report
            if p.head_search is not None:
                p.head_search.save(run.head_search_file)
        setup_seconds = time.perf_counter() - started
        # 2. Train, keeping the best epoch by the monitored validation figure (val_loss by default).
        history = History(run, lines=progress and not in_terminal(), label=p.cfg.name or "")
        trainer = _trainer(p.cfg, run, p.ranks, progress, [history, *(callbacks or [])], logger)
        run.interrupted = _train(trainer, p.module, p.loaders, run, p.resumed)
        run.history = history.rows
        if run.interrupted or not p.ranks.is_zero:
            return run
        # 3. Evaluate the best checkpoint (once, on rank 0); 4. write the report.
        ev = _evaluate_best(run, trainer, p, setup_seconds)
        images = [p.store[i] for i in split_indices(p.ds)["evaluation"][0]]
        write_run_report(run, ev, images, data_info, _wrong_explained(p.module.model, ev, images))
        return run
    finally:
        run.release()  # the folder is free for a --resume


def _wrong_explained(model, ev, images) -> list:
    """The report's most confidently wrong evaluation images (multi-label: labels), each with where the model saw
    the class it gave (the label it gave or missed)."""
    wrong = ev.wrong_shown(WRONG_SHOWN)
    maps = class_maps(model, [images[i] for i, _, _ in wrong], "gradcam", [c for _, c, _ in wrong])
    return [overlay(np.asarray(images[i]), m) for (i, _, _), m in zip(wrong, maps)]


def _save_lr_curve(run: Run, found: LRFind | None) -> None:
    """The finder's curve beside the run, as CSV and picture. A run that found its rate earlier (resumed;
    or written by headstart 0.1.0, whose report drew the picture) gets its picture from its CSV."""
    if found is None and run.config.lr_find and run.lr_find_file.is_file() and not run.lr_find_picture.is_file():
        found = LRFind.read(run.lr_find_file, run.config.lr)
    if found is not None:
        found.save(run.lr_find_file, run.lr_find_picture)


def _find_lr(p: Prepared, progress: bool) -> LRFind:
    """The range test on the model and batches the run trains with; the run then trains the head at its rate."""
    found, p.cfg = tune(p.module, p.loaders["training"], p.ranks.world, progress)
    p.run.config = p.cfg
    return found


def find_lr(data: str | Path | None = None, *, progress: bool = False, **options: Any) -> LRFind:
    """``headstart lr-find``: the learning-rate range test (``headstart.training.lr_finder.LRFind``) on the
    model and batches ``fit`` would train with these options; nothing is written."""
    return _find_lr(_prepare(data, None, None, None, {**options, "lr_find": True}, progress, writes=False), progress)
