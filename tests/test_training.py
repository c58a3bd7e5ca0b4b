"""Training: the run folder, the features cache, the tutorial's seed recipe, and resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn

from headstart import backbones
from headstart.backbones import create_model
from headstart.config import resolve_config
from headstart.strategies import apply_strategy
from headstart.training import Run, TrainingError, TransferModule, fit


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # One decoded-image cache for the whole session, outside the runs.
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


FAST = dict(input_size=64, batch_size=64)


def test_features_on_demo_computes_the_backbone_once_and_learns(tmp_path: Path, monkeypatch):
    seen = []
    forward = backbones.TimmBody.forward
    monkeypatch.setattr(backbones.TimmBody, "forward", lambda self, x: (seen.append(len(x)), forward(self, x))[1])
    run = fit("demo", strategy="features", epochs=8, runs_dir=tmp_path, name="f", **FAST)
    assert sum(seen) == 1500  # every demo image through the backbone exactly once, for 8 epochs
    m = run.metrics
    assert m["total"] == 300 and m["correct"] == round(m["accuracy"] * 300)
    assert m["accuracy"] >= 0.75, m  # frozen ImageNet features separate Fashion-MNIST well
    assert m["trainable_params"] == 1280 * 100 + 100 + 100 * 10 + 10  # the head only

    files = {p.relative_to(run.dir).as_posix() for p in run.dir.rglob("*") if p.is_file()}
    assert {"config.yaml", "history.csv", "data.json", "metrics.json",
            "checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= files
    with (run.dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "backbone_lr", "trainable", "seconds"}
    best_epoch = min(rows, key=lambda r: float(r["val_loss"]))["epoch"]
    assert m["best_epoch"] == int(best_epoch)
    config = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert config["strategy"] == "features" and config["input_size"] == 64 and config["recipe"] == "default"
    assert Run.load(run.dir).metrics == json.loads((run.dir / "metrics.json").read_text())
    ckpt = torch.load(run.best_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["headstart"]["classes"][0] == "T-shirt/top"
    assert ckpt["headstart"]["preprocessing"]["input_size"] == 64
    assert ckpt["headstart"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


class _Capture(L.Callback):
    def on_train_start(self, trainer, module):
        self.optimizer = trainer.optimizers[0]
        self.model = module.model


def test_half_trains_only_the_top_and_frozen_batchnorm_never_moves(tmp_path: Path):
    capture = _Capture()
    run = fit("demo", strategy="half", epochs=1, runs_dir=tmp_path, name="h", callbacks=[capture],
              input_size=32, batch_size=128, augment=False, pretrained_bn_stats=False)
    model = capture.model
    frozen, open_ = model.groups[:5], model.groups[5:]
    in_optimizer = {id(p) for g in capture.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in in_optimizer for g in frozen for p in g.params)
    assert all(id(p) in in_optimizer for g in open_ for p in g.params)
    # The frozen BatchNorm statistics are still the pretrained ones after training.
    pretrained = create_model("efficientnet_lite0", 10, input_size=32)
    trained = {k.removeprefix("model."): v for k, v in torch.load(run.last_checkpoint, weights_only=False)["state_dict"].items()}
    reference = pretrained.state_dict()
    names = {m: n for n, m in model.named_modules()}
    frozen_bn = [names[m] for g in frozen for m in g.modules if isinstance(m, nn.BatchNorm2d)]
    open_bn = [names[m] for g in open_ for m in g.modules if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and open_bn
    assert all(torch.equal(trained[f"{n}.running_mean"], reference[f"{n}.running_mean"]) for n in frozen_bn)
    assert not all(torch.equal(trained[f"{n}.running_mean"], reference[f"{n}.running_mean"]) for n in open_bn)


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
    with pytest.raises(ValueError, match="Unknown recipe 'fast'. Choose one of: default, seed"):
        resolve_config(recipe="fast")
    with pytest.raises(ValueError, match="Unknown strategy 'most'. Choose one of: features, partial"):
        resolve_config(overrides={"strategy": "most"})
    with pytest.raises(ValueError, match="Unknown option.*epoch\\b"):
        resolve_config(overrides={"epoch": 3})


class _StopAfter(L.Callback):
    """Ctrl-C right after epoch ``epoch`` (and its checkpoint) finished."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt  # what Ctrl-C does


@pytest.mark.parametrize("strategy, size", [("features", 64), ("half", 32)])  # dropout; + augmentation
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path: Path, strategy: str, size: int):
    opts = dict(strategy=strategy, epochs=4, deterministic=True, runs_dir=tmp_path, early_stopping=0,
                input_size=size, batch_size=128)
    whole = fit("demo", name="whole", **opts)
    stopped = fit("demo", name="stopped", callbacks=[_StopAfter(2)], **opts)
    assert stopped.interrupted and stopped.last_checkpoint.exists() and not stopped.metrics
    assert [r["epoch"] for r in stopped.history] == [1, 2]
    resumed = fit(resume=stopped.dir)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(resumed.history) == strip(whole.history)
    timing = ("setup_seconds", "train_seconds")
    assert {k: v for k, v in resumed.metrics.items() if k not in timing} == {
        k: v for k, v in whole.metrics.items() if k not in timing}
    with pytest.raises(TrainingError, match="its config differs \\(epochs: the run has 4, asked 6\\)"):
        fit(resume=stopped.dir, epochs=6)


def test_bad_input_writes_nothing(tmp_path: Path):
    with pytest.raises(ValueError, match="Unknown backbone 'vgg61'"):
        fit("demo", backbone="vgg61", runs_dir=tmp_path)
    with pytest.raises(ValueError, match="freeze must be 0-9. Received: freeze=20"):
        fit("demo", strategy="partial", freeze="20", runs_dir=tmp_path, **FAST)
    assert not any(tmp_path.iterdir())


def test_train_cli_end_to_end_and_exit_codes(tmp_path: Path):
    from typer.testing import CliRunner

    from headstart.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["train", "demo", "--epochs", "2", "--input-size", "64", "--runs-dir", str(tmp_path),
                             "--name", "cli"])
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert f"Number of correctly identified images: {metrics['correct']} of 300" in ok.output
    assert f"Run: {tmp_path / 'cli'}" in ok.output
    again = runner.invoke(app, ["train", "demo", "--runs-dir", str(tmp_path), "--name", "cli", "--input-size", "64"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["train", "demo", "--recipe", "quick"])
    assert bad.exit_code == 2 and "Unknown recipe 'quick'. Choose one of: default, seed" in bad.output
    assert runner.invoke(app, ["train"]).exit_code == 2


def test_resume_refuses_changed_data(tmp_path: Path):
    from conftest import make_food11, photo

    data = make_food11(tmp_path / "data", {"training": [6, 6], "validation": [2, 2], "evaluation": [2, 2]})
    stopped = fit(data, strategy="features", epochs=3, input_size=32, runs_dir=tmp_path / "runs", name="r",
                  callbacks=[_StopAfter(1)])
    assert stopped.interrupted
    photo(50).save(data / "training" / "1_99.jpg")
    with pytest.raises(TrainingError, match="the data changed since it started"):
        fit(resume=stopped.dir)


class _Modes(L.Callback):
    """Records, at the first training batch, which parts are in train mode."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            m = module.model
            bns = [x for x in m.body.modules() if isinstance(x, nn.BatchNorm2d)]
            self.head_training = m.head.training
            self.bn_training = [x.training for x in bns]


@pytest.mark.parametrize("strategy, pretrained_bn_stats, head, bn", [
    ("features", True, True, "none"),   # the head's dropout is on even though features put the model in eval mode
    ("half", True, True, "none"),       # fine-tuned BatchNorm keeps its pretrained statistics (Keras' advice)
    ("half", False, True, "some"),      # ... or learns new ones in the open groups
    ("scratch", True, True, "all"),     # from random weights there are no statistics to keep
])
def test_train_and_eval_modes_during_training(tmp_path: Path, strategy, pretrained_bn_stats, head, bn):
    modes = _Modes()
    fit("demo", strategy=strategy, epochs=1, runs_dir=tmp_path, name="m", callbacks=[modes], input_size=32,
        batch_size=256, pretrained_bn_stats=pretrained_bn_stats, augment=False)
    assert modes.head_training is head
    expected = {"none": not any(modes.bn_training), "some": 0 < sum(modes.bn_training) < len(modes.bn_training),
                "all": all(modes.bn_training)}
    assert expected[bn], modes.bn_training


def test_frozen_prefix_is_computed_once_and_matches_the_uncached_path(tmp_path: Path, monkeypatch):
    stem_images = []
    model_split = backbones.Classifier.split

    def counting_split(self, k):
        cut = model_split(self, k)
        if cut is not None:
            self.body.net.conv_stem.register_forward_hook(lambda mod, inp, out: stem_images.append(len(out)))
        return cut

    monkeypatch.setattr(backbones.Classifier, "split", counting_split)
    opts = dict(strategy="half", epochs=3, augment=False, deterministic=True, runs_dir=tmp_path, input_size=32, batch_size=64)
    cached = fit("demo", name="cached", **opts)
    assert sum(stem_images) == 1500  # the frozen stem ran once per image, for 3 epochs
    uncached = fit("demo", name="uncached", cache_frozen=False, **opts)
    for a, b in zip(cached.history, uncached.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-3) and a["val_loss"] == pytest.approx(b["val_loss"], rel=2e-3)
    assert abs(cached.metrics["accuracy"] - uncached.metrics["accuracy"]) <= 0.01


class _Layouts(L.Callback):
    """What the trainer does at the first batch: the memory order of what a trained conv reads, the forward."""

    channels_last = compiled = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            self.compiled = hasattr(module._forward, "_torchdynamo_orig_callable")
            conv = next((m for m in module.model.body.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad), None)
            if conv is not None:
                self._hook = conv.register_forward_pre_hook(self._look)

    def _look(self, conv, inputs):
        x = inputs[0]
        self.channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self._hook.remove()


def test_speed_levers_change_the_speed_not_the_results(tmp_path: Path):
    opts = dict(strategy="half", epochs=2, augment=False, runs_dir=tmp_path, input_size=32, batch_size=64)
    seen = {}
    for channels_last in (True, False):
        probe = _Layouts()
        seen[channels_last] = fit("demo", name=f"cl-{channels_last}", channels_last=channels_last, callbacks=[probe], **opts)
        assert probe.channels_last is channels_last and probe.compiled is False
    for a, b in zip(seen[True].history, seen[False].history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3) and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    # torch.compile: the head of `features` (a short compile, still ~30 s on 2 cores)
    opts = dict(strategy="features", epochs=2, runs_dir=tmp_path, input_size=32)
    probe = _Layouts()
    compiled = fit("demo", name="compiled", compile=True, callbacks=[probe], **opts)
    plain = fit("demo", name="plain", **opts)
    assert probe.compiled is True
    # Compiled dropout draws from another generator: close, not equal.
    for a, b in zip(compiled.history, plain.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-2) and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-2)
    assert abs(compiled.metrics["accuracy"] - plain.metrics["accuracy"]) <= 0.02
