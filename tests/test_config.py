"""Config: defaults < recipe < YAML < flags, the tutorial's seed recipe exactly, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headstart.backbones import create_model
from headstart.config import resolve_config
from headstart.errors import ConfigError
from headstart.strategies import apply_strategy
from headstart.training import TransferModule


def test_seed_recipe_builds_the_tutorials_vgg16_and_optimizer():
    cfg = resolve_config(recipe="seed", overrides={"backbone": "vgg16", "strategy": "partial", "freeze_layers": 10})
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.augment, cfg.input_size) == ("adam", 1e-5, 32, 10, False, 224)
    assert cfg.early_stopping == 0 and cfg.label_smoothing == 0 and cfg.schedule == "constant"
    model = create_model("vgg16", 11, weights="none")
    apply_strategy(model, cfg.strategy, freeze_layers=cfg.freeze_layers)
    opt = TransferModule(model, cfg, 10, {}).configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.Adam
    assert {g["lr"] for g in opt.param_groups} == {1e-5}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 13_031_611


def test_default_recipe_values_and_overrides(tmp_path: Path):
    (tmp_path / "run.yaml").write_text("epochs: 3\nlr: 0.01\nrecipe: seed\n")
    cfg = resolve_config(yaml_path=tmp_path / "run.yaml", overrides={"lr": "0.5"})
    assert (cfg.recipe, cfg.epochs, cfg.lr, cfg.batch_size) == ("seed", 3, 0.5, 32)  # flags beat YAML beat recipe
    default = resolve_config()
    assert (default.optimizer, default.schedule, default.augment, default.early_stopping) == ("adamw", "cosine", True, 5)
    assert default.label_smoothing > 0 and default.backbone_lr < default.lr


@pytest.mark.parametrize("kwargs, message", [
    (dict(recipe="fast"), "Unknown recipe 'fast'. Choose one of: default, seed"),
    (dict(overrides={"strategy": "most"}), "Unknown strategy 'most'. Choose one of: features, partial"),
    (dict(overrides={"epoch": 3}), "Unknown option.*epoch\\b"),
    (dict(overrides={"epochs": "ten"}), "epochs must be a number \\(int\\). Received: epochs='ten'"),
    (dict(overrides={"batch_size": 0}), "batch_size must be at least 1. Received: batch_size=0"),
])
def test_bad_options_are_config_errors_that_name_what_was_received(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(**kwargs)


def test_a_config_file_that_is_missing_or_not_a_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(yaml_path=tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- epochs\n- 3\n")
    with pytest.raises(ConfigError, match="must hold a mapping of options"):
        resolve_config(yaml_path=tmp_path / "list.yaml")
