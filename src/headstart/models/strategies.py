"""Transfer-learning strategies as data: which groups of the backbone train, at which learning rate.

The tutorial compares three ways to use a pretrained VGG16; headstart names five:

- ``features``: the whole backbone frozen, only the head trains (on cached features);
- ``partial``: the first K groups frozen (``half``: half of them, rounded up; for VGG16 that is
  the tutorial's "half network", its first 10 Keras layers frozen, as ``freeze_layers=10``);
- ``full``: everything trains (the tutorial's "full network");
- ``gradual``: the head first, then groups unfrozen from the top (ULMFiT / fastai);
- ``scratch``: the same architecture from random weights, to show what transfer buys.

>>> from headstart.models.factory import create_model
>>> model = create_model("vgg16", 11, weights="none")
>>> plan = apply_strategy(model, "partial", freeze_layers=10)
>>> plan.frozen_groups, count_trainable(model)
(['block1', 'block2', 'block3'], 13031611)

Frozen means frozen: ``requires_grad`` off, no optimizer state, and BatchNorm layers kept in
eval mode so their running statistics never move (``Classifier.train`` honours that).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from headstart.config import STRATEGIES
from headstart.errors import ConfigError
from headstart.models.classifier import Classifier, count_params


@dataclass
class StrategyPlan:
    """What a strategy did to a model: the groups left frozen and those that train."""

    strategy: str
    frozen_groups: list[str] = field(default_factory=list)
    trainable_groups: list[str] = field(default_factory=list)
    frozen_layers: list[str] = field(default_factory=list)  # VGG16's Keras layers, when counted so


def count_trainable(model: nn.Module) -> int:
    return count_params(model, trainable_only=True)


def freeze_modules(model: Classifier, modules: list[nn.Module], params: list[nn.Parameter] | None = None) -> None:
    """Stop ``modules`` (and ``params`` owned elsewhere) from training, BatchNorm statistics included."""
    for m in modules:
        m.requires_grad_(False)
    for p in params or []:
        p.requires_grad_(False)
    model.frozen_modules = list(dict.fromkeys([*model.frozen_modules, *modules]))
    model.train(model.training)  # puts the frozen modules' BatchNorm layers in eval mode now


def unfreeze_all(model: Classifier) -> None:
    model.requires_grad_(True)
    model.frozen_modules = []
    model.train(model.training)


def freeze_groups(model: Classifier, count: int) -> None:
    """Freeze the first ``count`` groups (input side) of the backbone."""
    for g in model.groups[:count]:
        freeze_modules(model, g.modules, g.params)


def resolve_freeze(model: Classifier, spec: int | float | str) -> int:
    """How many leading groups a freeze point means.

    ``spec`` is a group count (``3``), a fraction of the groups (``0.5``), a group name (freeze up
    to and including it: ``"block3"``), or ``"half"``.
    """
    n = len(model.groups)
    names = [g.name for g in model.groups]
    if isinstance(spec, str):
        if spec == "half":
            # Rounded up: for VGG16 that is block1-3, exactly the tutorial's "half network"
            # (its first 10 Keras layers, layers[:-9]).
            return (n + 1) // 2
        if spec in names:
            return names.index(spec) + 1
        try:
            spec = float(spec) if "." in spec else int(spec)
        except ValueError:
            raise ConfigError(
                f"Unknown freeze point '{spec}' for {model.backbone}: use a group count 0-{n}, a fraction "
                f"in [0, 1], 'half', or a group name ({', '.join(names)}). Received: freeze={spec!r}"
            ) from None
    if isinstance(spec, float):
        if not 0 <= spec <= 1:
            raise ConfigError(f"A freeze fraction must be in [0, 1]. Received: freeze={spec}")
        return round(n * spec)
    if not 0 <= spec <= n:
        raise ConfigError(
            f"{model.backbone} has {n} groups ({', '.join(names)}): freeze must be 0-{n}. Received: freeze={spec}"
        )
    return spec


def freeze_keras_layers(model: Classifier, count: int) -> list[str]:
    """Freeze VGG16's first ``count`` Keras layers, as ``for layer in model.layers[:count]`` does."""
    layers = model.body.layers()
    if layers is None:
        raise ConfigError(
            f"--freeze-layers counts Keras layers and only applies to vgg16; {model.backbone} is "
            "frozen by groups: use --freeze K, a fraction, or a group name."
        )
    if not 0 <= count <= len(layers):
        raise ConfigError(
            f"vgg16 has {len(layers)} Keras layers: freeze_layers must be 0-{len(layers)}. "
            f"Received: freeze_layers={count}"
        )
    chosen = layers[:count]
    freeze_modules(model, [m for _, m in chosen if m is not None])
    return [name for name, _ in chosen]


def apply_strategy(
    model: Classifier, strategy: str, freeze: int | float | str | None = None, freeze_layers: int | None = None
) -> StrategyPlan:
    """Freeze what ``strategy`` keeps fixed; return the plan. For ``gradual`` this is its first
    stage (only the head trains); ``unfreeze_top`` opens groups as training goes on."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy '{strategy}'. Choose one of: {', '.join(STRATEGIES)}.")
    if (freeze is not None or freeze_layers is not None) and strategy not in ("partial", "half"):
        raise ConfigError(f"A freeze point only applies to the partial strategy. Received: strategy={strategy!r}")
    unfreeze_all(model)
    plan = StrategyPlan(strategy)
    if strategy in ("features", "gradual"):
        freeze_groups(model, len(model.groups))
    elif strategy in ("partial", "half"):
        if freeze_layers is not None:
            plan.frozen_layers = freeze_keras_layers(model, freeze_layers)
        else:
            freeze_groups(model, resolve_freeze(model, "half" if freeze is None else freeze))
    frozen = {id(p) for p in model.body.parameters() if not p.requires_grad}
    for g in model.groups:
        all_frozen = all(id(p) in frozen for p in g.params)
        (plan.frozen_groups if all_frozen else plan.trainable_groups).append(g.name)
    return plan


def unfreeze_top(model: Classifier, count: int) -> list[str]:
    """Gradual unfreezing: let the top ``count`` groups train again (all others stay frozen)."""
    groups = model.groups[len(model.groups) - count :] if count else []
    opened = {id(m) for g in groups for m in g.modules}
    for g in groups:
        for p in g.params:
            p.requires_grad_(True)
        for m in g.modules:
            m.requires_grad_(True)
    model.frozen_modules = [m for m in model.frozen_modules if id(m) not in opened]
    model.train(model.training)
    return [g.name for g in groups]


def param_groups(
    model: Classifier, head_lr: float, body_lr: float, decay: float = 1.0, include_frozen: bool = False
) -> list[dict]:
    """Optimizer parameter groups for what trains: the head at ``head_lr``, backbone group i (of n)
    at ``body_lr * decay ** (n - 1 - i)`` (lower groups learn slower, as in fastai's
    ``slice(lr/100, lr)``). Frozen parameters are left out, so they get no optimizer state;
    ``include_frozen`` keeps them in (gradual unfreezing opens them later)."""
    out = [{"name": "head", "params": [p for p in model.head.parameters() if p.requires_grad], "lr": head_lr}]
    n = len(model.groups)
    for i, g in enumerate(model.groups):
        params = [p for p in g.params if p.requires_grad or include_frozen]
        if params:
            out.append({"name": g.name, "params": params, "lr": body_lr * decay ** (n - 1 - i)})
    return [g for g in out if g["params"]]
