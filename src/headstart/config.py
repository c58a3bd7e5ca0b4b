"""One resolved configuration per run: defaults < recipe < YAML file < flags.

>>> cfg = resolve_config(recipe="seed", overrides={"backbone": "vgg16", "freeze_layers": 10})
>>> cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.augment
('adam', 1e-05, 32, 10, False)

A run's ``config.yaml`` is this object written out, and is enough to run it again.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from headstart._files import write_text
from headstart.errors import ConfigError
from headstart.loggers import check as check_loggers


@dataclass
class TrainConfig:
    # --- data
    data: str = "demo"
    layout: str | None = None  # detected when None
    val_fraction: float = 0.2  # only for splits the data does not have
    eval_fraction: float = 0.2
    allow_outside_root: bool = False  # a CSV manifest may list images outside its folder
    # --- model
    backbone: str = "efficientnet_lite0"  # bundled weights: works offline
    weights: str = "default"
    input_size: int | None = None  # None: the size the weights were trained at
    head_dropout: float = 0.2  # the tutorial's head
    head_hidden: int = 100
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
    optimizer: str = "adamw"
    lr: float = 1e-3  # the head's learning rate
    backbone_lr: float = 1e-4  # the top backbone group's; a pretrained body needs gentler steps
    lr_decay: float = 0.5  # each lower group learns this much slower (discriminative rates)
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    label_smoothing: float = 0.1
    augment: bool = True  # random resized crop + horizontal flip
    early_stopping: int = 5  # epochs without a better val_loss before stopping; 0 = off
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
    compile: bool = False  # torch.compile the forward pass: pays on long GPU runs, costs minutes up front
    runs_dir: str = "runs"
    name: str | None = None  # default: <backbone>-<strategy>-<time>
    advice: dict | None = None  # with --strategy auto: what headstart.advice measured and recommended

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The tutorial's recipe, exactly: Adam, lr 1e-5 for everything, batch 32, 10 epochs, no
# augmentation, the best weights by validation loss kept, no early stopping.
SEED = dict(
    recipe="seed", epochs=10, batch_size=32, optimizer="adam", lr=1e-5, backbone_lr=1e-5, lr_decay=1.0,
    weight_decay=0.0, warmup_epochs=0.0, schedule="constant", label_smoothing=0.0, augment=False,
    early_stopping=0, input_size=224, pretrained_bn_stats=False,
)
RECIPES: dict[str, dict[str, Any]] = {"default": {}, "seed": SEED}
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
# The strategies headstart.strategies knows (and "auto": the advised one, headstart.advice).
STRATEGIES = ("features", "partial", "half", "full", "gradual", "scratch")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _check(cfg: TrainConfig) -> TrainConfig:
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
    for name in ("epochs", "batch_size", "unfreeze_every", "num_nodes"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1. Received: {name}={getattr(cfg, name)}")
    for name in ("lr", "backbone_lr"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be positive. Received: {name}={getattr(cfg, name)}")
    return cfg


def coerce(name: str, value: Any) -> Any:
    """YAML and flags give strings or numbers; match the field's type (int for epochs, ...)."""
    if value is None:
        return None
    if name == "loggers":
        return [value] if isinstance(value, str) else list(value)
    if isinstance(value, os.PathLike):
        return str(value)
    default = TrainConfig.__dataclass_fields__[name].default
    if isinstance(default, bool) and isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
        try:
            return type(default)(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number ({type(default).__name__}). Received: {name}={value!r}") from None
    if name in ("freeze",) and value is not None:
        return str(value)
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of options (key: value); it holds a {type(loaded).__name__}.")
    return loaded


def resolve_config(recipe: str | None = None, yaml_path: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the recipe's values, then the YAML file's, then ``overrides`` (flags)."""
    from_yaml = read_yaml(yaml_path) if yaml_path else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in fields(TrainConfig)}
    for source, values in (("the config file", from_yaml), ("the options", overrides)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown option(s) in {source}: {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    name = recipe or overrides.get("recipe") or from_yaml.get("recipe") or "default"
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe '{name}'. Choose one of: {', '.join(RECIPES)}.")
    values: dict[str, Any] = {**RECIPES[name], **from_yaml, **overrides, "recipe": name}
    return _check(TrainConfig(**{k: coerce(k, v) for k, v in values.items()}))


def as_trained(cfg: TrainConfig) -> TrainConfig:
    """The config as the run really trains: ``features`` computes the backbone once, so it never augments."""
    return dataclasses.replace(cfg, augment=False) if cfg.strategy == "features" and cfg.augment else cfg


def save_config(cfg: TrainConfig, path: Path, header: str = "") -> None:
    write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Path) -> TrainConfig:
    values = read_yaml(path)
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"{path} has unknown option(s): {', '.join(unknown)}. Was it written by another version? "
                          "Remove them.")
    return _check(TrainConfig(**values))
