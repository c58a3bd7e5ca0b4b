"""One resolved configuration per run: defaults < recipe < YAML file < flags.

>>> cfg = resolve_config(recipe="seed", overrides={"backbone": "vgg16", "freeze_layers": 10})
>>> cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.augment, cfg.head_init, cfg.loss
('keras_adam', 1e-05, 32, 10, False, 'keras', 'keras')

A run's ``config.yaml`` is this object written out, and is enough to run it again. Every option is
checked where a ``TrainConfig`` is made, however it is made (flags, YAML, a Python call): a name
among the known ones, a number in its range (``RANGES``), nothing the strategy would ignore.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Container
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from headstart.checks import (
    INPUT_SIZES,
    RANGES,
    boolean,
    check_engine,
    check_input_size,
    check_loggers,
    check_number,
    check_run_name,
)
from headstart.errors import ConfigError
from headstart.utils.files import write_text


@dataclass
class TrainConfig:
    # --- data
    data: str = "demo"
    layout: str | None = None  # detected when None
    val_fraction: float = 0.2  # only for splits the data does not have
    eval_fraction: float = 0.2
    allow_outside_root: bool = False  # a CSV manifest may list images outside its folder
    exclude: str | None = None  # a CSV whose first column lists images to leave out (headstart audit's suspects.csv)
    task: str = "auto"  # single, multi (several labels an image: docs/multilabel.md), auto: as the data says
    stream_cache_gb: float | None = None  # prepared shards at a URL: the most this machine caches (None: 50)
    # --- model
    backbone: str = "efficientnet_lite0"  # bundled weights: works offline
    weights: str = "default"
    input_size: int | str | None = None  # None: the size the weights were trained at; else 16-1024 (INPUT_SIZES);
    # "auto": the size headstart.advice.input_size recommends, measured before the run (its config.yaml has the number)
    force_input_size: bool = False  # an input_size outside 16-1024, on purpose
    head_dropout: float = 0.2  # the tutorial's head
    head_hidden: int = 100
    head_init: str = "torch"  # keras: Glorot-uniform kernels, zero biases, as Keras' Dense (headstart.training.losses)
    # auto: features (and gradual's head warm-up) first fit a few heads on the cached features, each seeded, and
    # train the one best on validation by `monitor` (headstart.training.head_search): they cost seconds once the
    # features exist. off: the head and recipe as given.
    head_search: str = "auto"
    head_choice: dict | None = None  # with head_search: the head it chose and the values it set (head_search.csv)
    # --- strategy
    strategy: str = "features"  # on small data the frozen features are hard to beat, and fast; "auto": advised
    freeze: str | None = None  # partial: group count, fraction, group name or "half"
    freeze_layers: int | None = None  # partial, vgg16: Keras layer count (the tutorial: 10)
    unfreeze_every: int = 2  # gradual: epochs between opening one more group from the top
    cache_frozen: bool = True  # partial without augmentation: compute the frozen layers once
    # Fine-tuned BatchNorm layers keep normalising with their pretrained statistics (Keras'
    # advice; small batches of a small dataset give noisy ones). Never for scratch.
    pretrained_bn_stats: bool = True
    # --- recipe
    recipe: str = "default"
    epochs: int = 15
    batch_size: int = 32  # the global batch, shared among the devices: a recipe means the same on 1 or 8
    # adam, adamw, sgd: PyTorch's; keras_adam: Keras' Adam (epsilon 1e-7, where Keras adds it); lbfgs: features
    # only, the whole training split one batch, weight_decay an L2 penalty (a logistic regression)
    optimizer: str = "adamw"
    lr: float = 1e-3  # the head's learning rate
    backbone_lr: float = 1e-4  # the top backbone group's; a pretrained body needs gentler steps
    lr_decay: float = 0.5  # each lower group learns this much slower (discriminative rates)
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    label_smoothing: float = 0.1
    loss: str = "torch"  # torch: cross-entropy on logits; keras: Keras' on clipped softmax probabilities
    augment: bool = True  # random resized crop + horizontal flip
    early_stopping: int = 5  # epochs without a better `monitor` before stopping; 0 = off
    # Weight averaging of what trains (headstart.training.averaging): ema (every step) or swa (the last quarter's
    # epochs); validation, the checkpoints and so evaluation use the average. Off: on the demo it
    # was within noise of none (docs/benchmarks.md).
    average: str = "none"
    # --- engine
    seed: int = 0
    deterministic: bool = False
    accelerator: str = "auto"  # cpu, gpu, or auto: a GPU where there is one
    devices: str = "auto"  # per machine: a count or a list of ids; auto: every GPU, or one CPU process
    num_nodes: int = 1  # machines (torchrun, SLURM)
    precision: str = "auto"  # bf16 mixed on a GPU, 32-bit on a CPU
    num_workers: int = 0  # decoded images come from a memory-mapped cache: loading is cheap
    channels_last: bool = True  # NHWC tensors: faster convolutions on CPUs and GPUs (1.35x, lite0 on CPU)
    loggers: list[str] = field(default_factory=list)  # csv, tensorboard, mlflow, wandb: written in the run folder
    # What runs the layers that only infer (the frozen pass, TTA's mirrored pass; evaluate, predict, serve):
    # auto is the fastest installed engine that matches PyTorch on a CPU (OpenVINO, ONNX Runtime), PyTorch on
    # a GPU (headstart.engines). What trains always runs in PyTorch.
    engine: str = "auto"
    engine_precision: str = "fp32"  # bf16: OpenVINO on a CPU with bf16 units (AMX, AVX-512 BF16)
    compile: bool = False  # torch.compile the forward pass: pays on long GPU runs, costs minutes up front
    runs_dir: str = "runs"
    name: str | None = None  # default: <backbone>-<strategy>-<time>
    advice: dict | None = None  # with --strategy auto or --input-size auto: what headstart.advice measured
    # --- test-time augmentation
    # The evaluation at the end of training also averages each image with its mirror image; the
    # plain figure stays in "accuracy", this one goes beside it ("tta_accuracy"). Off: it doubles
    # the evaluation's cost, and a model served without it would not match the recorded figure.
    tta: bool = False
    # --- imbalance (headstart.evaluation.metrics)
    class_weights: str = "none"  # auto: each class's loss weighted N / (C * n_c), mean 1 over the training images
    sampler: str = "random"  # balanced: each epoch draws every class equally often, with replacement
    monitor: str = "val_loss"  # what the best checkpoint and early stopping go by (multi-label data: val_map)
    # --- augmented views (headstart.training.augmented_views)
    # features, partial, half: K augmented views of every training image go through the frozen layers
    # once, before training (fp16; in memory up to 512 MB, else memory-mapped under the cache folder);
    # each epoch reads one view per image. 0 = off: augmentation reruns the frozen layers every epoch.
    # auto: partial and half with augmentation take AUTO_VIEWS (at most the epochs; at least
    # AUTO_MIN_VIEWS within the budget, else none); features stays plain (its features computed once).
    aug_views: int | str = "auto"
    aug_views_budget_gb: float = 4.0  # the most the views may take (memory or disk); K is lowered to fit
    # --- learning-rate finder (headstart.training.lr_finder)
    # A range test before training sets the head's lr to its suggestion; config.yaml records the rate found.
    lr_find: bool = False

    def __post_init__(self) -> None:
        # However it is made (flags, YAML, a Python call, dataclasses.replace), a config is usable:
        # a bad value fails here, before any image is decoded or any file written.
        check(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The tutorial's recipe, in Keras' numerics: Keras' Adam (epsilon 1e-7), lr 1e-5 for everything,
# batch 32, 10 epochs, no augmentation, a head initialised as Keras' Dense layers, Keras'
# categorical cross-entropy, the best weights by validation loss kept, no early stopping.
# tests/training/test_keras_parity.py checks it step for step against Keras; the data order differs.
SEED = dict(
    recipe="seed",
    epochs=10,
    batch_size=32,
    optimizer="keras_adam",
    lr=1e-5,
    backbone_lr=1e-5,
    lr_decay=1.0,
    weight_decay=0.0,
    warmup_epochs=0.0,
    schedule="constant",
    label_smoothing=0.0,
    augment=False,
    early_stopping=0,
    input_size=224,
    pretrained_bn_stats=False,
    head_init="keras",
    loss="keras",
    head_search="off",  # the tutorial's head, as it trains it
)
RECIPES: dict[str, dict[str, Any]] = {"default": {}, "seed": SEED}
OPTIMIZERS = ("adam", "adamw", "sgd", "keras_adam", "lbfgs")
NUMERICS = ("torch", "keras")  # head_init and loss: PyTorch's or Keras' (headstart.training.losses)
SCHEDULES = ("constant", "cosine")
# The strategies headstart.models.strategies knows (and "auto": the advised one, headstart.advice.strategy).
STRATEGIES = ("features", "partial", "half", "full", "gradual", "scratch")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
CLASS_WEIGHTS = ("none", "auto")
SAMPLERS = ("random", "balanced")
MONITORS = ("val_loss", "val_accuracy", "val_macro_f1", "val_map")  # val_loss is lowest best, the others highest
TASKS = ("auto", "single", "multi")  # one class an image, or several (headstart.data.layouts)
HEAD_SEARCHES = ("auto", "off")
AVERAGES = ("none", "ema", "swa")  # weight averaging: none, exponential moving average, stochastic weight averaging
UNFREEZES = ("gradual",)  # the strategies that open groups as they go (auto never advises one)


def check(cfg: TrainConfig, given: Container[str] = ()) -> TrainConfig:
    """Every option of ``cfg`` known and in range, and none that its strategy would ignore. ``given``:
    the options asked for explicitly (flags, a Python call): those are checked even at their defaults."""
    if cfg.recipe not in RECIPES:
        raise ConfigError(f"Unknown recipe '{cfg.recipe}'. Choose one of: {', '.join(RECIPES)}.")
    if cfg.strategy not in STRATEGIES and cfg.strategy != "auto":
        raise ConfigError(f"Unknown strategy '{cfg.strategy}'. Choose one of: {', '.join(STRATEGIES)}, or auto.")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"Unknown optimizer '{cfg.optimizer}'. Choose one of: {', '.join(OPTIMIZERS)}.")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"Unknown schedule '{cfg.schedule}'. Choose one of: {', '.join(SCHEDULES)}.")
    if cfg.accelerator not in ACCELERATORS:
        raise ConfigError(f"Unknown accelerator '{cfg.accelerator}'. Choose one of: {', '.join(ACCELERATORS)}.")
    check_loggers(cfg.loggers)
    check_engine(cfg.engine, cfg.engine_precision)
    for name, choices in (
        ("class_weights", CLASS_WEIGHTS),
        ("sampler", SAMPLERS),
        ("monitor", MONITORS),
        ("average", AVERAGES),
        ("head_init", NUMERICS),
        ("loss", NUMERICS),
        ("head_search", HEAD_SEARCHES),
        ("task", TASKS),
    ):
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{name} must be one of: {', '.join(choices)}. Received: {name}={getattr(cfg, name)!r}")
    for name, allowed in RANGES.items():
        value = getattr(cfg, name)
        if not (name == "freeze_layers" and value is None) and not (name == "aug_views" and value == "auto"):
            check_number(name, value, allowed)
    if cfg.val_fraction + cfg.eval_fraction >= 1:
        raise ConfigError(
            f"val_fraction + eval_fraction must leave images for training (below 1). "
            f"Received: {cfg.val_fraction} + {cfg.eval_fraction}"
        )
    check_input_size(cfg.input_size, cfg.force_input_size)
    check_run_name(cfg.name)
    if cfg.lr_find and (cfg.num_nodes > 1 or (cfg.devices != "auto" and _device_count(cfg.devices) > 1)):
        raise ConfigError(
            f"lr_find runs on one device; received devices={cfg.devices!r}, num_nodes={cfg.num_nodes}. "
            "Find the rate on one device (headstart lr-find DATA), then pass it as --lr."
        )
    # A default is no request; a run's own config.yaml holds every default (weights: default,
    # unfreeze_every: 2), so only a value asked for or changed says someone expected an effect.
    default = {f.name: f.default for f in fields(TrainConfig)}
    if cfg.strategy not in UNFREEZES and ("unfreeze_every" in given or cfg.unfreeze_every != default["unfreeze_every"]):
        raise ConfigError(
            f"unfreeze_every only applies to the gradual strategy (one more group trained every N "
            f"epochs), not to {cfg.strategy}. Received: unfreeze_every={cfg.unfreeze_every} with "
            f"strategy={cfg.strategy!r}. "
            "Pass --strategy gradual, or leave --unfreeze-every out."
        )
    if (
        cfg.strategy == "scratch"
        and cfg.weights != "none"
        and ("weights" in given or cfg.weights != default["weights"])
    ):
        raise ConfigError(
            f"The scratch strategy starts from random weights; it cannot load any. Received: "
            f"weights={cfg.weights!r} with strategy='scratch'. Leave --weights out, or pick a strategy "
            "that starts from them (full, for every layer trained)."
        )
    check_views(cfg)
    check_lbfgs(cfg)
    check_head_choice(cfg.head_choice)
    return cfg


def check_head_choice(choice: Any) -> None:
    """``head_choice`` as the head search writes it (config.yaml may have been edited): the chosen
    candidate's name, what it changed, and every candidate's validation figures."""
    if choice is None:
        return
    figures = ("best_epoch", "val_loss", "val_accuracy", "val_macro_f1")
    ok = (
        isinstance(choice, dict)
        and isinstance(choice.get("chosen"), str)
        and isinstance(choice.get("taken"), dict)
        and choice.get("monitor") in MONITORS
        and all(isinstance(choice.get(k), (int, float)) for k in ("confidence", "seconds"))
        and isinstance(choice.get("candidates"), list)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("candidate"), str)
            and all(isinstance(c.get(k), (int, float)) for k in figures)
            for c in choice["candidates"]
        )
    )
    if not ok:
        raise ConfigError(
            "head_choice is what the head search records (chosen, taken, candidates with their validation "
            f"figures); this one is not. Received: head_choice={str(choice)[:200]!r}. Remove it to search again."
        )


def check_lbfgs(cfg: TrainConfig) -> None:
    """L-BFGS takes the whole training split as one batch: only a head on cached features fits that."""
    if cfg.optimizer != "lbfgs":
        return
    received = f"Received: optimizer='lbfgs' with strategy={cfg.strategy!r}"
    if cfg.strategy not in ("features", "auto"):
        raise ConfigError(
            f"The lbfgs optimizer trains a head on cached features, the whole training split one batch; "
            f"{cfg.strategy} trains backbone layers too. {received}. Use adamw, or --strategy features."
        )
    if cfg.lr_find:
        raise ConfigError(
            f"The learning-rate finder tunes a rate for steps on mini-batches; L-BFGS searches its own step. "
            f"{received} and lr_find=True. Leave --lr-find out."
        )


# The strategies whose frozen layers views go through: the whole body (features), the frozen prefix (partial, half).
VIEW_STRATEGIES = ("features", "partial", "half")


# aug_views=auto: views for partial and half with augmentation; K at most the epochs, and at least
# AUTO_MIN_VIEWS must fit the budget (fewer would repeat each view too often), else none.
AUTO_VIEWS, AUTO_MIN_VIEWS = 8, 4


def views_asked(cfg: TrainConfig) -> int:
    """The augmented views a config asks for: its number, or what ``auto`` means for its strategy."""
    if cfg.aug_views != "auto":
        return cfg.aug_views
    return AUTO_VIEWS if cfg.strategy in ("partial", "half") and cfg.augment and cfg.cache_frozen else 0


def check_views(cfg: TrainConfig) -> None:
    """Augmented views need frozen layers to compute once and augmentation to draw them with."""
    if not cfg.aug_views or cfg.aug_views == "auto":
        return
    received = f"Received: aug_views={cfg.aug_views}"
    if cfg.strategy not in (*VIEW_STRATEGIES, "auto"):
        raise ConfigError(
            f"aug_views computes the frozen layers on augmented views once; {cfg.strategy} trains every "
            f"layer, so nothing is frozen. {received} with strategy={cfg.strategy!r}. Use "
            f"{', '.join(VIEW_STRATEGIES)}, or leave --aug-views out."
        )
    if not cfg.augment:
        raise ConfigError(
            f"aug_views stores augmented views, but augmentation is off (the seed recipe turns it off). "
            f"{received} with augment=False. Pass --augment, or leave --aug-views out."
        )
    if not cfg.cache_frozen:
        raise ConfigError(
            f"aug_views computes the frozen layers once, but cache_frozen=False asks to run them every "
            f"epoch. {received} with cache_frozen=False. Drop one of the two."
        )


def _device_count(devices: str) -> int:
    """``--devices``' process count: "2" is two, "0,1" two ids; anything else is for distributed.parse_devices."""
    parts = [d for d in str(devices).split(",") if d.strip()]
    return len(parts) if len(parts) > 1 else int(parts[0]) if parts and parts[0].strip().isdigit() else 1


def coerce(name: str, value: Any) -> Any:
    """YAML and flags give strings or numbers; match the field's type (int for epochs, ...)."""
    default = TrainConfig.__dataclass_fields__[name].default
    if isinstance(default, bool):
        return boolean(name, value)
    if value is None:
        return None
    if name == "loggers":
        return [value] if isinstance(value, str) else list(value)
    if isinstance(value, os.PathLike):
        return str(value)
    if name in ("input_size", "aug_views") and isinstance(value, str) and value != "auto":  # a flag: "224", or "auto"
        try:
            return int(value)
        except ValueError:
            if name == "aug_views":
                raise ConfigError(f"aug_views must be a whole number or auto. Received: aug_views={value!r}") from None
            return value  # check_input_size says what it takes
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
        try:
            return type(default)(value)
        except ValueError:
            raise ConfigError(
                f"{name} must be a number ({type(default).__name__}). Received: {name}={value!r}"
            ) from None
    if name in ("freeze",) and value is not None:
        return str(value)
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem}). Write one option a line: key: value.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (UTF-8). A config file holds lines of key: value.") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of options (key: value); it holds a {type(loaded).__name__}.")
    return loaded


def resolve_config(
    recipe: str | None = None, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then the recipe's values, then the YAML file's, then ``overrides`` (flags)."""
    from_yaml = read_yaml(yaml_path) if yaml_path else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in fields(TrainConfig)}
    for source, values in (("the config file", from_yaml), ("the options", overrides)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown option(s) in {source}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
    name = recipe or overrides.get("recipe") or from_yaml.get("recipe") or "default"
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe '{name}'. Choose one of: {', '.join(RECIPES)}.")
    values: dict[str, Any] = {**RECIPES[name], **from_yaml, **overrides, "recipe": name}
    return check(TrainConfig(**{k: coerce(k, v) for k, v in values.items()}), given=overrides)


def as_trained(cfg: TrainConfig) -> TrainConfig:
    """The config as the run really trains: ``features`` computes the backbone once, so it never augments
    (but on augmented views computed once, ``aug_views``). Checked once more: a config changed after it
    was made (``cfg.epochs = 0``) fails here, before the run."""
    plain = cfg.strategy == "features" and cfg.augment and not views_asked(cfg)
    return check(dataclasses.replace(cfg, augment=False) if plain else cfg)


def save_config(cfg: TrainConfig, path: Path, header: str = "") -> None:
    write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Path) -> TrainConfig:
    values = read_yaml(path)
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(
            f"{path} has unknown option(s): {', '.join(unknown)}. Was it written by another version? Remove them."
        )
    if "force_input_size" not in values:
        values = _as_it_trained(values)
    try:
        return TrainConfig(**{k: coerce(k, v) for k, v in values.items()})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _as_it_trained(values: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml written before options were checked (it has no force_input_size), read as its run
    trained: input_size 0 meant the weights' size, one outside 16-1024 was used as given, and
    unfreeze_every (but with gradual) or weights (with scratch) had no effect. A finished run stays usable."""
    values, default = dict(values), TrainConfig.__dataclass_fields__
    size = values.get("input_size")
    if size == 0:
        values["input_size"] = None
    elif isinstance(size, int) and size not in INPUT_SIZES:
        values["force_input_size"] = True
    strategy = values.get("strategy", default["strategy"].default)
    if strategy not in UNFREEZES:
        values.pop("unfreeze_every", None)
    if strategy == "scratch":
        values.pop("weights", None)
    return values
