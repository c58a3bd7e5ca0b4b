"""Strategies: which parameters train, what the optimizer sees, and frozen BatchNorm stays frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headstart.errors import ConfigError
from headstart.models.factory import create_model
from headstart.models.strategies import (
    STRATEGIES,
    apply_strategy,
    count_trainable,
    param_groups,
    resolve_freeze,
    unfreeze_top,
)


@pytest.fixture
def lite0():
    return create_model("efficientnet_lite0", 3, weights="none", input_size=64)


def _trainable_groups(model) -> list[str]:
    return [g.name for g in model.groups if any(p.requires_grad for p in g.params)]


def test_vgg16_tutorial_half_is_freeze_layers_10():
    model = create_model("vgg16", 11, weights="none")
    plan = apply_strategy(model, "partial", freeze_layers=10)
    assert plan.frozen_layers[-1] == "block3_conv3" and len(plan.frozen_layers) == 10
    assert plan.frozen_groups == ["block1", "block2", "block3"]
    assert count_trainable(model) == 13_031_611
    # The named shortcut, half of the 5 groups rounded up, is the same model.
    apply_strategy(model, "half")
    assert _trainable_groups(model) == ["block4", "block5"]
    assert count_trainable(model) == 13_031_611


@pytest.mark.parametrize(
    "strategy, trainable",
    [
        ("features", []),
        ("gradual", []),
        ("full", ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "final"]),
        (
            "scratch",
            ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "final"],
        ),
        ("half", ["blocks.4", "blocks.5", "blocks.6", "final"]),
    ],
)
def test_which_groups_train_per_strategy(lite0, strategy: str, trainable: list[str]):
    plan = apply_strategy(lite0, strategy)
    assert _trainable_groups(lite0) == trainable == plan.trainable_groups
    assert all(p.requires_grad for p in lite0.head.parameters())  # the head always trains
    groups = param_groups(lite0, head_lr=1e-3, body_lr=1e-4)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in lite0.parameters() if p.requires_grad}
    assert [g["name"] for g in groups] == ["head", *trainable]


@pytest.mark.parametrize(
    "spec, frozen", [(3, 3), ("3", 3), (0.5, 4), ("0.5", 4), ("blocks.1", 3), ("half", 5), (0, 0), (9, 9)]
)
def test_freeze_points(lite0, spec, frozen: int):
    assert len(lite0.groups) == 9
    assert resolve_freeze(lite0, spec) == frozen
    plan = apply_strategy(lite0, "partial", freeze=spec)
    assert len(plan.frozen_groups) == frozen


def test_freeze_point_errors_name_the_valid_range(lite0):
    with pytest.raises(ConfigError, match=r"has 9 groups .* freeze must be 0-9. Received: freeze=12"):
        resolve_freeze(lite0, 12)
    with pytest.raises(ConfigError, match=r"Unknown freeze point 'block9'.*stem, blocks.0"):
        resolve_freeze(lite0, "block9")
    with pytest.raises(ConfigError, match=r"fraction must be in \[0, 1\]"):
        resolve_freeze(lite0, 1.5)
    with pytest.raises(ConfigError, match="only applies to vgg16"):
        apply_strategy(lite0, "partial", freeze_layers=3)
    with pytest.raises(ConfigError, match="Unknown strategy 'fine'. Choose one of: features, partial"):
        apply_strategy(lite0, "fine")


def test_frozen_batchnorm_statistics_never_move(lite0):
    apply_strategy(lite0, "partial", freeze=4)
    frozen_bn = [m for g in lite0.groups[:4] for m in g.modules if isinstance(m, nn.BatchNorm2d)]
    open_bn = [m for g in lite0.groups[4:] for m in g.modules if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and open_bn
    before = [m.running_mean.clone() for m in frozen_bn]
    lite0.train()  # what Lightning calls every epoch
    assert not any(m.training for m in frozen_bn) and all(m.training for m in open_bn)
    opt = torch.optim.SGD(param_groups(lite0, 0.1, 0.1), lr=0.1)
    for _ in range(2):
        loss = nn.functional.cross_entropy(lite0(torch.rand(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen_bn))
    assert all(p.grad is None for g in lite0.groups[:4] for p in g.params)
    assert not all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in open_bn)


def test_gradual_unfreezes_from_the_top(lite0):
    apply_strategy(lite0, "gradual")
    assert _trainable_groups(lite0) == []
    assert unfreeze_top(lite0, 2) == ["blocks.6", "final"]
    assert _trainable_groups(lite0) == ["blocks.6", "final"]
    lite0.train()
    assert lite0.body.net.bn2.training and not lite0.body.net.bn1.training
    groups = param_groups(lite0, head_lr=1e-3, body_lr=1e-4, decay=0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("head", 1e-3),
        ("blocks.6", pytest.approx(1e-5)),
        ("final", 1e-4),
    ]


# What each strategy promises, from headstart.training.fit.build_model: how many of lite0's 9 groups
# (input side) stay frozen, and whether the body starts from the pretrained weights.
PROMISES = {
    "features": (9, True),
    "gradual": (9, True),  # gradual: its first stage, only the head trains
    "partial": (5, True),
    "half": (5, True),  # partial without a freeze point: half, rounded up
    "full": (0, True),
    "scratch": (0, False),  # scratch: random weights, everything trains
}


@pytest.fixture(scope="module")
def bundled_stem():
    return create_model("efficientnet_lite0", 3, input_size=64).body.net.conv_stem.weight.detach().clone()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_builds_the_model_it_promises(strategy: str, bundled_stem):
    from headstart.config import resolve_config
    from headstart.training.fit import build_model

    frozen_count, pretrained = PROMISES[strategy]  # a KeyError: a new strategy without a promise here
    cfg = resolve_config(overrides={"strategy": strategy, "input_size": 64})
    model, plan = build_model(cfg, 3)
    names = [g.name for g in model.groups]
    frozen = [g.name for g in model.groups if not any(p.requires_grad for p in g.params)]
    assert frozen == names[:frozen_count]  # the input side, and nothing trainable left in it
    assert all(p.requires_grad for g in model.groups[frozen_count:] for p in g.params)
    assert all(p.requires_grad for p in model.head.parameters())
    assert (plan.frozen_groups, plan.trainable_groups) == (frozen, names[frozen_count:])
    assert torch.equal(model.body.net.conv_stem.weight, bundled_stem) is pretrained
    assert model.pretrained_bn_stats is pretrained  # scratch has no pretrained statistics to keep
    # Frozen BatchNorm stays in eval mode when training starts.
    model.pretrained_bn_stats = False
    model.train()
    bn = {g.name: [m.training for m in g.modules if isinstance(m, nn.BatchNorm2d)] for g in model.groups}
    assert all(not any(bn[n]) for n in frozen) and all(all(bn[n]) for n in names[frozen_count:])
    # Applied after another strategy, it leaves the same model: nothing of the earlier one leaks.
    apply_strategy(model, "features" if frozen_count < 9 else "full")
    again = apply_strategy(model, "full" if strategy == "scratch" else strategy)
    assert (again.frozen_groups, again.trainable_groups) == (plan.frozen_groups, plan.trainable_groups)
    assert [g.name for g in model.groups if not any(p.requires_grad for p in g.params)] == frozen
