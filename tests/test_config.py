"""Config: defaults < recipe < YAML < flags, the tutorial's seed recipe exactly, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from headstart.checks import check_input_size
from headstart.config import TrainConfig, as_trained, load_config, resolve_config, save_config
from headstart.errors import ConfigError
from headstart.models.factory import create_model
from headstart.models.strategies import apply_strategy
from headstart.training.fit import fit
from headstart.training.module import TransferModule
from headstart.training.optimizers import KerasAdam


def test_seed_recipe_builds_the_tutorials_vgg16_and_optimizer():
    cfg = resolve_config(recipe="seed", overrides={"backbone": "vgg16", "strategy": "partial", "freeze_layers": 10})
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.augment, cfg.input_size) == (
        "keras_adam",
        1e-5,
        32,
        10,
        False,
        224,
    )
    assert cfg.early_stopping == 0 and cfg.label_smoothing == 0 and cfg.schedule == "constant"
    assert (cfg.head_init, cfg.loss, cfg.weight_decay) == ("keras", "keras", 0)  # Keras' numerics (test_keras_parity)
    model = create_model("vgg16", 11, weights="none")
    apply_strategy(model, cfg.strategy, freeze_layers=cfg.freeze_layers)
    opt = TransferModule(model, cfg, 10, {}).configure_optimizers()["optimizer"]
    assert type(opt) is KerasAdam and {g["eps"] for g in opt.param_groups} == {1e-7}
    assert {g["lr"] for g in opt.param_groups} == {1e-5}
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 13_031_611


def test_default_recipe_values_and_overrides(tmp_path: Path):
    (tmp_path / "run.yaml").write_text("epochs: 3\nlr: 0.01\nrecipe: seed\n")
    cfg = resolve_config(yaml_path=tmp_path / "run.yaml", overrides={"lr": "0.5"})
    assert (cfg.recipe, cfg.epochs, cfg.lr, cfg.batch_size) == ("seed", 3, 0.5, 32)  # flags beat YAML beat recipe
    default = resolve_config()
    assert (default.optimizer, default.schedule, default.augment, default.early_stopping) == (
        "adamw",
        "cosine",
        True,
        5,
    )
    assert default.label_smoothing > 0 and default.backbone_lr < default.lr


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(recipe="fast"), "Unknown recipe 'fast'. Choose one of: default, seed"),
        (dict(overrides={"strategy": "most"}), "Unknown strategy 'most'. Choose one of: features, partial"),
        (dict(overrides={"epoch": 3}), "Unknown option.*epoch\\b"),
        (dict(overrides={"epochs": "ten"}), "epochs must be a number \\(int\\). Received: epochs='ten'"),
        (dict(overrides={"batch_size": 0}), "batch_size must be at least 1. Received: batch_size=0"),
    ],
)
def test_bad_options_are_config_errors_that_name_what_was_received(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(**kwargs)


def test_a_config_file_that_is_missing_or_not_a_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(yaml_path=tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- epochs\n- 3\n")
    with pytest.raises(ConfigError, match="must hold a mapping of options"):
        resolve_config(yaml_path=tmp_path / "list.yaml")


# Every numeric option out of its range, and options the strategy would ignore: (options, message).
BAD = [
    (dict(input_size=100_000), r"input_size must be between 16 and 1024 \(pixels\)\. Received: input_size=100000"),
    (dict(input_size=1), r"input_size must be between 16 and 1024 \(pixels\)\. Received: input_size=1\b"),
    (
        dict(input_size=0),
        r"input_size must be between 16 and 1024 \(pixels\)\. Received: input_size=0\. Leave it out "
        r"for the size the weights were trained at",
    ),
    (
        dict(input_size=-32, force_input_size=True),
        r"input_size must be between 1 and 4096 \(pixels\)\. Received: input_size=-32",
    ),
    (dict(input_size=64.5), r"input_size must be a whole number.*Received: input_size=64.5"),
    (dict(early_stopping=-1), r"early_stopping must be at least 0 \(0 = off\)\. Received: early_stopping=-1"),
    (dict(epochs=0), r"epochs must be at least 1\. Received: epochs=0"),
    (dict(epochs=2.5), r"epochs must be a whole number, at least 1\. Received: epochs=2.5"),
    (dict(batch_size=-8), r"batch_size must be at least 1\. Received: batch_size=-8"),
    (dict(lr=0), r"lr must be greater than 0\. Received: lr=0"),
    (dict(lr=float("inf")), r"lr must be greater than 0\. Received: lr=inf"),
    (dict(backbone_lr=-1e-4), r"backbone_lr must be greater than 0\. Received: backbone_lr=-0.0001"),
    (dict(lr_decay=0.0), r"lr_decay must be greater than 0 and at most 1 .*Received: lr_decay=0.0"),
    (dict(lr_decay=2.0), r"lr_decay must be greater than 0 and at most 1 .*Received: lr_decay=2.0"),
    (dict(weight_decay=-0.01), r"weight_decay must be at least 0\. Received: weight_decay=-0.01"),
    (dict(warmup_epochs=-1.0), r"warmup_epochs must be at least 0\. Received: warmup_epochs=-1.0"),
    (dict(label_smoothing=1.0), r"label_smoothing must be at least 0 and below 1\. Received: label_smoothing=1.0"),
    (dict(head_dropout=1.0), r"head_dropout must be at least 0 and below 1 .*Received: head_dropout=1.0"),
    (dict(head_dropout=-0.1), r"head_dropout must be at least 0 and below 1 .*Received: head_dropout=-0.1"),
    (dict(head_hidden=-1), r"head_hidden must be at least 0 .*Received: head_hidden=-1"),
    (dict(num_workers=-1), r"num_workers must be at least 0 .*Received: num_workers=-1"),
    (dict(seed=-1), r"seed must be between 0 and 4294967295 .*Received: seed=-1"),
    (dict(seed=2**32), r"seed must be between 0 and 4294967295 .*Received: seed=4294967296"),
    (dict(strategy="partial", freeze_layers=-1), r"freeze_layers must be at least 0\. Received: freeze_layers=-1"),
    (dict(val_fraction=1.0), r"val_fraction must be at least 0 and below 1 .*Received: val_fraction=1.0"),
    (dict(val_fraction=0.5, eval_fraction=0.5), r"val_fraction \+ eval_fraction must leave images for training"),
    (dict(unfreeze_every=0, strategy="gradual"), r"unfreeze_every must be at least 1\. Received: unfreeze_every=0"),
    (
        dict(unfreeze_every=3),
        r"unfreeze_every only applies to the gradual strategy .*, not to features\. "
        r"Received: unfreeze_every=3 with strategy='features'",
    ),
    (dict(unfreeze_every=3, strategy="auto"), r"unfreeze_every only applies to the gradual strategy"),
    (
        dict(weights="weights.pth", strategy="scratch"),
        r"scratch strategy starts from random weights.*"
        r"Received: weights='weights.pth' with strategy='scratch'",
    ),
]
# Asked for explicitly, an option the strategy ignores is an error even at its default value.
BAD_WHEN_ASKED = [
    (dict(unfreeze_every=2, strategy="half"), r"unfreeze_every only applies to the gradual strategy.*strategy='half'"),
    (dict(weights="default", strategy="scratch"), r"scratch strategy starts from random weights"),
]


@pytest.mark.parametrize("options, message", BAD + BAD_WHEN_ASKED)
def test_out_of_range_options_are_refused_by_resolve_config(options, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(overrides=options)


@pytest.mark.parametrize("options, message", BAD)
def test_out_of_range_options_are_refused_by_train_config_itself(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize("options, message", BAD + BAD_WHEN_ASKED)
def test_fit_refuses_them_before_anything_is_written(options, message, tmp_path: Path):
    with pytest.raises(ConfigError, match=message):
        fit("demo", runs_dir=tmp_path / "runs", **options)
    assert not (tmp_path / "runs").exists()


def test_a_config_changed_after_it_was_made_is_checked_again_before_the_run(tmp_path: Path):
    cfg = TrainConfig(runs_dir=str(tmp_path / "runs"), input_size=32)
    cfg.input_size = 100_000
    with pytest.raises(ConfigError, match="Received: input_size=100000"):
        as_trained(cfg)
    with pytest.raises(ConfigError, match="Received: input_size=100000"):
        fit(config=cfg)
    assert not (tmp_path / "runs").exists()


def test_the_defaults_recipes_and_good_values_pass():
    assert TrainConfig().input_size is None  # the weights' own size
    assert resolve_config(recipe="seed").input_size == 224
    for options in (
        dict(input_size=16),
        dict(input_size=1024),
        dict(early_stopping=0),
        dict(head_dropout=0.0),
        dict(strategy="gradual", unfreeze_every=1),
        dict(strategy="scratch", weights="none"),
        dict(strategy="auto"),
        dict(seed=2**32 - 1),
        dict(lr_decay=1.0),
        dict(num_workers=0),
    ):
        cfg = resolve_config(overrides=options)
        assert all(getattr(cfg, k) == v for k, v in options.items()), options


def test_an_input_size_outside_the_range_can_be_forced():
    for size in (8, 2048):
        cfg = resolve_config(overrides={"input_size": size, "force_input_size": True})
        assert (cfg.input_size, cfg.force_input_size) == (size, True)
    with pytest.raises(ConfigError, match=r"Received: input_size=2048\. To use it anyway, pass --force-input-size"):
        check_input_size(2048)
    check_input_size(2048, force=True)


def test_yaml_values_are_checked_as_flags_are(tmp_path: Path):
    (tmp_path / "run.yaml").write_text("input_size: 0\n")
    with pytest.raises(ConfigError, match="Received: input_size=0"):
        resolve_config(yaml_path=tmp_path / "run.yaml")
    (tmp_path / "run.yaml").write_text("early_stopping: '-1'\n")
    with pytest.raises(ConfigError, match="Received: early_stopping=-1"):
        resolve_config(yaml_path=tmp_path / "run.yaml")


def test_a_runs_config_yaml_runs_again_with_its_defaults_written_out(tmp_path: Path):
    """config.yaml holds every option, unfreeze_every and weights too: not an explicit request."""
    cfg = resolve_config(overrides={"strategy": "scratch", "input_size": 32})
    save_config(cfg, tmp_path / "config.yaml")
    assert "unfreeze_every: 2" in (tmp_path / "config.yaml").read_text()
    assert resolve_config(yaml_path=tmp_path / "config.yaml") == cfg
    assert load_config(tmp_path / "config.yaml") == cfg


def test_a_config_yaml_written_before_the_checks_loads_as_its_run_trained(tmp_path: Path):
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "force_input_size"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**old, "input_size": 0, "unfreeze_every": 3}))
    cfg = load_config(path)
    assert (cfg.input_size, cfg.unfreeze_every) == (None, 2)  # 0 was the weights' size; gradual alone unfreezes
    path.write_text(yaml.safe_dump({**old, "input_size": 2048, "strategy": "scratch", "weights": "hub"}))
    cfg = load_config(path)
    assert (cfg.input_size, cfg.force_input_size, cfg.weights) == (2048, True, "default")
    path.write_text(yaml.safe_dump({**old, "early_stopping": -1}))
    with pytest.raises(ConfigError, match=f"{path}: early_stopping must be at least 0"):
        load_config(path)


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "a/b", "..", ".", ""])
def test_a_run_name_stays_inside_the_runs_folder(tmp_path: Path, name: str):
    from typer.testing import CliRunner

    from headstart.cli.main import app

    runs = tmp_path / "deep" / "runs"
    for command in (["train", "demo", "--name", name], ["compare", "demo", "--strategies", "features", "--name", name]):
        result = CliRunner().invoke(app, [*command, "--runs-dir", str(runs), "--epochs", "1"])
        assert result.exit_code == 2 and "one folder inside --runs-dir" in result.output, (command, result.output)
    (tmp_path / "named.yaml").write_text(f"name: {name!r}\n")
    with pytest.raises(ConfigError, match="one folder inside --runs-dir"):
        resolve_config(yaml_path=tmp_path / "named.yaml")
    assert not any(tmp_path.rglob("config.yaml"))  # nothing written, here or above


@pytest.mark.parametrize("text, where", [("epochs: [1\n", "line 2, column 1"), ("a: b: c\n", "line 1, column 5")])
def test_malformed_yaml_names_the_file_line_and_column(tmp_path: Path, text: str, where: str):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=f"bad.yaml, {where}: not valid YAML"):
        resolve_config(yaml_path=bad)


@pytest.mark.parametrize("value", ["maybe", "ture", 2, "", [True]])
def test_a_yes_no_option_takes_true_or_false_only(tmp_path: Path, value):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"augment": value}))
    with pytest.raises(ConfigError, match="augment is true or false. Received: augment="):
        resolve_config(yaml_path=tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="tta is true or false"):
        resolve_config(overrides={"tta": value})


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), ("yes", True), ("On", True), (1, True), ("false", False), ("no", False), (0, False)],
)
def test_the_yes_no_spellings_yaml_and_flags_use(value, expected):
    assert resolve_config(overrides={"augment": value}).augment is expected


def test_augmented_views_have_a_documented_maximum():
    with pytest.raises(ConfigError, match=r"aug_views must be between 0 and 64.*Received: aug_views=10000"):
        resolve_config(overrides={"aug_views": 10000})
    assert resolve_config(overrides={"aug_views": 64}).aug_views == 64
