"""The checks every option goes through, wherever it comes from: flags, a YAML file, a run's
``config.yaml``, a checkpoint's or an exported model's metadata. Ranges of numbers (``RANGES``), input
sizes, run names, yes/no values and loggers, each refused with what was received and how to fix it.

>>> check_number("epochs", 0, RANGES["epochs"])      # doctest: +SKIP
ConfigError: epochs must be at least 1. Received: epochs=0
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from dataclasses import dataclass
from typing import Any

from headstart.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The values a numeric option takes: ``low`` to ``high``, each end included unless it is open."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    whole: bool = True  # an int
    note: str = ""  # what the ends mean

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = (str(int(x)) if float(x).is_integer() else f"{x:g}" for x in (self.low, self.high))
        above = f"{'greater than' if self.low_open else 'at least'} {low}"
        below = f"{'below' if self.high_open else 'at most'} {high}"
        if math.isinf(self.high):
            text = above
        elif self.low_open or self.high_open:
            text = f"{above} and {below}"
        else:
            text = f"between {low} and {high}"
        return f"{text} ({self.note})" if self.note else text


# Every numeric option of TrainConfig but input_size (check_input_size), with its range.
RANGES: dict[str, Range] = {
    "val_fraction": Range(0, 1, high_open=True, whole=False, note="a share of training"),
    "eval_fraction": Range(0, 1, high_open=True, whole=False, note="a share of training"),
    "head_dropout": Range(0, 1, high_open=True, whole=False, note="1 would drop every feature"),
    "head_hidden": Range(0, note="0: a single linear layer"),
    "freeze_layers": Range(0),
    "unfreeze_every": Range(1),
    "epochs": Range(1),
    "batch_size": Range(1),
    "lr": Range(0, low_open=True, whole=False),
    "backbone_lr": Range(0, low_open=True, whole=False),
    "lr_decay": Range(0, 1, low_open=True, whole=False, note="each lower group's rate is the one above times this"),
    "weight_decay": Range(0, whole=False),
    "warmup_epochs": Range(0, whole=False),
    "label_smoothing": Range(0, 1, high_open=True, whole=False),
    "early_stopping": Range(0, note="0 = off"),
    "seed": Range(0, 2**32 - 1, note="the seeds numpy takes"),
    "num_nodes": Range(1),
    "num_workers": Range(0, note="0: load in the training process"),
    # Each epoch reads one view an image, so more views than epochs are never read (a run lowers K to its
    # epochs); 64 bounds the frozen pass a run may ask for up front (64 passes over the training images).
    "aug_views": Range(0, MAX_AUG_VIEWS := 64, note="augmented views per training image; 0 = off; or auto"),
    "aug_views_budget_gb": Range(0, low_open=True, whole=False, note="GB the views may take"),
}
# The engines that run frozen layers and trained models for inference (headstart.engines), and their precisions.
ENGINES = ("auto", "torch", "onnxruntime", "openvino")
ENGINE_PRECISIONS = ("fp32", "bf16")


def check_engine(engine: str, precision: str) -> None:
    """A known engine at a precision it runs: bf16 is OpenVINO's (the CPU's bf16 units)."""
    if engine not in ENGINES:
        raise ConfigError(f"Unknown engine '{engine}'. Choose one of: {', '.join(ENGINES)}.")
    if precision not in ENGINE_PRECISIONS:
        raise ConfigError(f"Unknown engine precision '{precision}'. Choose one of: {', '.join(ENGINE_PRECISIONS)}.")
    if precision == "bf16" and engine in ("torch", "onnxruntime"):
        raise ConfigError(
            f"--engine-precision bf16 is OpenVINO's (the CPU's bf16 units); {engine} runs fp32 here. "
            f"Received: --engine {engine} --engine-precision bf16. Use --engine openvino or auto, or leave "
            "the precision out."
        )


# Below 16 pixels a backbone sees next to nothing; above 1024 every decoded image takes over 3 MB
# of cache and memory (100,000 once asked for a 360 GB cache file). force_input_size lifts both.
INPUT_SIZES = Range(16, 1024, note="pixels")
# Bounds on what no option, config or checkpoint may exceed, forced or not: they decide allocations
# (an image at 4096 px is 200 MB as floats; a head of 100,000 classes, 100 hidden units, 40 MB).
MAX_INPUT_SIZE = 4096
ANY_INPUT_SIZE = Range(1, MAX_INPUT_SIZE, note="pixels")
CLASSES = Range(2, 100_000, note="classes")
HEAD_HIDDEN = Range(0, 65_536, note="units of the hidden layer; 0: a single linear layer")
HEAD_DROPOUT = Range(0, 1, high_open=True, whole=False, note="1 would drop every feature")


def check_number(name: str, value: Any, allowed: Range) -> None:
    """A ConfigError naming ``name``, the value received and the allowed range, unless ``value`` is in it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if allowed.whole else numbers.Real):
        kind = "a whole number" if allowed.whole else "a number"
        raise ConfigError(f"{name} must be {kind}, {allowed}. Received: {name}={value!r}")
    if not (math.isfinite(value) and value in allowed):
        raise ConfigError(f"{name} must be {allowed}. Received: {name}={value!r}")


def check_run_name(name: str | None, what: str = "--name") -> None:
    """A run's (or comparison's) name is one folder inside the runs folder: never a path out of it."""
    if name is None:
        return
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(
            f"{what} is the name of one folder inside --runs-dir: no '/', '\\', '..' or absolute path. "
            f"Received: {what}={name!r}. Pick a plain name (e.g. food-features), or change --runs-dir."
        )


def check_input_size(size: int | str | None, force: bool = False) -> None:
    """None (the weights' own size), "auto" (measured), or a size in pixels: 16-1024 unless ``force``, never below 1."""
    if size is None or size == "auto":
        return
    if isinstance(size, str):
        raise ConfigError(
            f"input_size must be a whole number {INPUT_SIZES}, or auto (measured by headstart "
            f"advise). Received: input_size={size!r}"
        )
    allowed = ANY_INPUT_SIZE if force else INPUT_SIZES
    if isinstance(size, numbers.Integral) and not isinstance(size, bool) and size not in allowed:
        fix = (
            "Leave it out for the size the weights were trained at"
            if size < 1
            else "To use it anyway, pass --force-input-size (force_input_size=True)"
        )
        raise ConfigError(f"input_size must be {allowed}. Received: input_size={size}. {fix}.")
    check_number("input_size", size, allowed)  # a whole number


# What a yes/no option takes as text (flags, YAML strings); YAML's own true/false arrive as booleans.
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOLEANS:
        return BOOLEANS[value.strip().lower()]
    raise ConfigError(f"{name} is true or false. Received: {name}={value!r}")


# The experiment trackers --logger takes, and what pip installs for each (the module has the logger's name).
LOGGERS = {"csv": None, "tensorboard": "tensorboard", "mlflow": "'headstart[mlflow]'", "wandb": "'headstart[wandb]'"}


def check_loggers(names: list[str]) -> None:
    """Unknown names, or a logger whose package is missing, as a ConfigError that says what to install."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"Unknown logger '{name}'. Choose from: {', '.join(LOGGERS)}.")
        if LOGGERS[name] and importlib.util.find_spec(name) is None:
            raise ConfigError(f"--logger {name} needs the package {name}: pip install {LOGGERS[name]}")
