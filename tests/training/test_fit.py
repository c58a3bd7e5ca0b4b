"""Training: what trains and what stays frozen, train/eval modes, resume, speed levers, the CLI.

Mechanics run on the tiny fixture; the one accuracy claim is on the demo data (``demo_run``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.config import resolve_config
from headstart.errors import ConfigError, RunError
from headstart.models.factory import create_model
from headstart.runs.checkpoints import load_model
from headstart.runs.folder import Run
from headstart.training.fit import fit
from helpers.datasets import TINY_IMAGES, TINY_OPTIONS, photo
from helpers.training import StopAfter


def test_the_demo_learns_well_above_chance(demo_run):
    m = demo_run.metrics
    assert m["total"] == 300 and m["correct"] == round(m["accuracy"] * 300)
    assert m["accuracy"] >= 0.75, m  # frozen ImageNet features separate Fashion-MNIST well (chance: 0.10)
    assert m["trainable_params"] == 1280 * 100 + 100 + 100 * 10 + 10  # the head only
    assert m["best_epoch"] == min(demo_run.history, key=lambda r: r["val_loss"])["epoch"]


class _Capture(L.Callback):
    def on_train_start(self, trainer, module):
        self.optimizer = trainer.optimizers[0]
        self.model = module.model


def test_half_trains_only_the_top_and_frozen_batchnorm_never_moves(tiny, tmp_path: Path):
    capture = _Capture()
    run = fit(
        tiny,
        strategy="half",
        epochs=1,
        runs_dir=tmp_path,
        name="h",
        callbacks=[capture],
        augment=False,
        pretrained_bn_stats=False,
        **TINY_OPTIONS,
    )
    model = capture.model
    frozen, open_ = model.groups[:5], model.groups[5:]
    in_optimizer = {id(p) for g in capture.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in in_optimizer for g in frozen for p in g.params)
    assert all(id(p) in in_optimizer for g in open_ for p in g.params)
    # The frozen BatchNorm statistics are still the pretrained ones after training.
    pretrained = create_model("efficientnet_lite0", 3, input_size=32)
    state = torch.load(run.last_checkpoint, weights_only=True)["state_dict"]
    trained = {k.removeprefix("model."): v for k, v in state.items()}
    reference = pretrained.state_dict()
    names = {m: n for n, m in model.named_modules()}
    frozen_bn = [names[m] for g in frozen for m in g.modules if isinstance(m, nn.BatchNorm2d)]
    open_bn = [names[m] for g in open_ for m in g.modules if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and open_bn
    assert all(torch.equal(trained[f"{n}.running_mean"], reference[f"{n}.running_mean"]) for n in frozen_bn)
    assert not all(torch.equal(trained[f"{n}.running_mean"], reference[f"{n}.running_mean"]) for n in open_bn)


@pytest.mark.parametrize("strategy", ["features", "half"])  # dropout; + augmentation and fine-tuning
def test_interrupted_and_resumed_equals_uninterrupted(tiny, tmp_path: Path, strategy: str):
    opts = dict(strategy=strategy, epochs=4, deterministic=True, runs_dir=tmp_path, early_stopping=0, **TINY_OPTIONS)
    whole = fit(tiny, name="whole", **opts)
    stopped = fit(tiny, name="stopped", callbacks=[StopAfter(2)], **opts)
    assert stopped.interrupted and stopped.last_checkpoint.exists() and not stopped.metrics
    assert [r["epoch"] for r in stopped.history] == [1, 2]
    # Moved elsewhere first: the checkpoint's own paths (Lightning keeps absolute ones) must not matter.
    moved = shutil.move(stopped.dir, tmp_path / "elsewhere" / "stopped")
    resumed = fit(resume=moved)
    assert not stopped.dir.exists() and resumed.dir == Path(moved)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(resumed.history) == strip(whole.history)
    timing = ("setup_seconds", "train_seconds", "frozen_pass", "head_search")  # the frozen pass is read from disk
    assert {k: v for k, v in resumed.metrics.items() if k not in timing} == {
        k: v for k, v in whole.metrics.items() if k not in timing
    }
    assert resumed.metrics["frozen_pass"] == {**whole.metrics["frozen_pass"], "kept": True}
    if strategy == "features":  # the search made once, by the first run, and recorded: the resumed run trains it
        assert resumed.metrics["head_search"] == stopped.config.head_choice
        searched = {k: v for k, v in whole.metrics["head_search"].items() if k != "seconds"}
        assert {k: v for k, v in resumed.metrics["head_search"].items() if k != "seconds"} == searched
    with pytest.raises(RunError, match="its config differs \\(epochs: the run has 4, asked 6\\)"):
        fit(resume=moved, epochs=6)


def test_last_ckpt_is_the_last_epoch_even_when_it_was_not_the_best(tiny, tmp_path: Path):
    # A huge learning rate: the validation loss gets worse after the first epoch, so best.ckpt stays behind.
    run = fit(
        tiny,
        strategy="features",
        epochs=3,
        lr=1000.0,
        warmup_epochs=0,
        schedule="constant",
        early_stopping=0,
        runs_dir=tmp_path,
        name="worse",
        **TINY_OPTIONS,
    )
    best, last = (torch.load(p, weights_only=True)["epoch"] for p in (run.best_checkpoint, run.last_checkpoint))
    assert best < 2 and last == 2  # 0-based: the third epoch


def test_a_run_killed_in_its_first_epoch_starts_over_in_place(tiny, tmp_path: Path):
    opts = dict(strategy="features", epochs=2, deterministic=True, runs_dir=tmp_path, **TINY_OPTIONS)
    whole = fit(tiny, name="whole", **opts)
    killed = fit(tiny, name="killed", callbacks=[StopAfter(1)], **opts)
    for f in (killed.best_checkpoint, killed.last_checkpoint, killed.history_file):  # what kill -9 in epoch 1 leaves
        f.unlink()
    with pytest.raises(RunError, match="did not finish. Resume it with headstart train --resume"):
        load_model(killed.dir)
    again = fit(resume=killed.dir)
    assert again.dir == killed.dir and [r["epoch"] for r in again.history] == [1, 2]
    assert again.metrics["correct"] == whole.metrics["correct"]
    assert [r["val_loss"] for r in again.history] == pytest.approx([r["val_loss"] for r in whole.history], abs=1e-6)


def test_one_run_per_folder(tiny, tmp_path: Path):
    from headstart.data.dataset import load_dataset

    ds = load_dataset(tiny)
    cfg = resolve_config(None, None, {"data": str(tiny), "runs_dir": str(tmp_path), "name": "same"})
    first, second = Run.create(cfg), Run.create(cfg)  # two runs started at once, both before the folder exists
    first.start(ds)
    with pytest.raises(RunError, match="already exists \\(another run took it since this one started\\)"):
        second.start(ds)
    # While the first trains, resuming it elsewhere is refused; once it is done, it is free.
    with pytest.raises(RunError, match="is being trained by another process right now"):
        Run(first.dir, first.config).start(ds, resumed=True)
    first.release()
    assert Run(first.dir, first.config).start(ds, resumed=True)["classes"] == ds.classes
    unnamed = dataclasses.replace(cfg, name=None)
    a, b = Run.create(unnamed), Run.create(unnamed)
    a.start(ds)
    b.start(ds)
    assert a.dir != b.dir and b.dir.name.startswith(a.dir.name) and b.dir.is_dir()


def test_resume_refuses_changed_data(tmp_path: Path):
    from helpers.datasets import make_food11

    data = make_food11(tmp_path / "data", {"training": [6, 6], "validation": [2, 2], "evaluation": [2, 2]})
    stopped = fit(
        data,
        strategy="features",
        epochs=3,
        runs_dir=tmp_path / "runs",
        name="r",
        callbacks=[StopAfter(1)],
        **TINY_OPTIONS,
    )
    assert stopped.interrupted
    photo(50).save(data / "training" / "1_99.jpg")
    with pytest.raises(RunError, match="the data changed since it started"):
        fit(resume=stopped.dir)


def test_bad_input_writes_nothing(tiny, tmp_path: Path):
    with pytest.raises(ConfigError, match="Unknown backbone 'vgg61'"):
        fit(tiny, backbone="vgg61", runs_dir=tmp_path)
    with pytest.raises(ConfigError, match="freeze must be 0-9. Received: freeze=20"):
        fit(tiny, strategy="partial", freeze="20", runs_dir=tmp_path, **TINY_OPTIONS)
    assert not any(tmp_path.iterdir())


def test_train_cli_end_to_end_and_exit_codes(tiny, tmp_path: Path):
    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "train",
            str(tiny),
            "--epochs",
            "2",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "cli",
        ],
    )
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert f"Number of correctly identified images: {metrics['correct']} of 9" in ok.output
    assert f"Run: {tmp_path / 'cli'}" in ok.output
    config = (tmp_path / "cli" / "config.yaml").read_text()
    assert "epochs: 2\n" in config and "batch_size: 8\n" in config  # the flags, as TrainConfig fields
    again = runner.invoke(app, ["train", str(tiny), "--runs-dir", str(tmp_path), "--name", "cli"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["train", "demo", "--recipe", "quick"])
    assert bad.exit_code == 2 and "Invalid value for '--recipe'" in bad.output and "'quick' is not one of" in bad.output
    assert runner.invoke(app, ["train"]).exit_code == 2


class _Modes(L.Callback):
    """Records, at the first training batch, which parts are in train mode."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            m = module.model
            bns = [x for x in m.body.modules() if isinstance(x, nn.BatchNorm2d)]
            self.head_training = m.head.training
            self.bn_training = [x.training for x in bns]


@pytest.mark.parametrize(
    "strategy, pretrained_bn_stats, head, bn",
    [
        ("features", True, True, "none"),  # the head's dropout is on even though features put the model in eval mode
        ("half", True, True, "none"),  # fine-tuned BatchNorm keeps its pretrained statistics (Keras' advice)
        ("half", False, True, "some"),  # ... or learns new ones in the open groups
        ("scratch", True, True, "all"),  # from random weights there are no statistics to keep
    ],
)
def test_train_and_eval_modes_during_training(tiny, tmp_path: Path, strategy, pretrained_bn_stats, head, bn):
    modes = _Modes()
    fit(
        tiny,
        strategy=strategy,
        epochs=1,
        runs_dir=tmp_path,
        name="m",
        callbacks=[modes],
        pretrained_bn_stats=pretrained_bn_stats,
        augment=False,
        **TINY_OPTIONS,
    )
    assert modes.head_training is head
    expected = {
        "none": not any(modes.bn_training),
        "some": 0 < sum(modes.bn_training) < len(modes.bn_training),
        "all": all(modes.bn_training),
    }
    assert expected[bn], modes.bn_training


class _Layouts(L.Callback):
    """What the trainer does at the first batch: the memory order of what a trained conv reads, the forward."""

    channels_last = compiled = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            self.compiled = hasattr(module._forward, "_torchdynamo_orig_callable")
            conv = next(
                (m for m in module.model.body.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad), None
            )
            if conv is not None:
                self._hook = conv.register_forward_pre_hook(self._look)

    def _look(self, conv, inputs):
        x = inputs[0]
        self.channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self._hook.remove()


def test_channels_last_changes_the_memory_order_not_the_results(tiny, tmp_path: Path):
    opts = dict(strategy="half", epochs=2, augment=False, runs_dir=tmp_path, **TINY_OPTIONS)
    seen = {}
    for channels_last in (True, False):
        probe = _Layouts()
        seen[channels_last] = fit(
            tiny, name=f"cl-{channels_last}", channels_last=channels_last, callbacks=[probe], **opts
        )
        assert probe.channels_last is channels_last and probe.compiled is False
    for a, b in zip(seen[True].history, seen[False].history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3) and a["val_loss"] == pytest.approx(
            b["val_loss"], rel=1e-3
        )


def test_compile_trains_the_same_model(tiny, tmp_path: Path):
    # torch.compile on the head of `features`: the shortest compile there is (still ~20 s on 2 cores).
    opts = dict(strategy="features", epochs=2, runs_dir=tmp_path, **TINY_OPTIONS)
    probe = _Layouts()
    compiled = fit(tiny, name="compiled", compile=True, callbacks=[probe], **opts)
    plain = fit(tiny, name="plain", **opts)
    assert probe.compiled is True
    # Compiled dropout draws from another generator: close, not equal.
    for a, b in zip(compiled.history, plain.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2) and a["val_loss"] == pytest.approx(
            b["val_loss"], rel=2e-2
        )
    assert compiled.metrics["total"] == plain.metrics["total"] == TINY_IMAGES - 24 - 9


def test_a_runs_config_runs_it_again_and_records_what_ran(tiny_run, tmp_path: Path):
    import yaml

    saved = yaml.safe_load((tiny_run.dir / "config.yaml").read_text())
    assert saved["augment"] is False  # features computes the backbone once: nothing was augmented
    assert saved["name"] is None  # the folder is the run's own; a rerun goes to a new one
    result = CliRunner().invoke(
        app, ["train", "--config", str(tiny_run.dir / "config.yaml"), "--runs-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    (again,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rerun = yaml.safe_load((again / "config.yaml").read_text())
    assert {k: v for k, v in rerun.items() if k != "runs_dir"} == {k: v for k, v in saved.items() if k != "runs_dir"}
    rows = lambda path: [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(path.open())]  # noqa: E731
    assert rows(again / "history.csv") == rows(tiny_run.dir / "history.csv")  # the same run, again
    (tmp_path / "no-data.yaml").write_text("epochs: 2\n")
    nothing = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "no-data.yaml")])
    assert nothing.exit_code == 2 and "a --config that says data:" in " ".join(nothing.output.split())


def test_kill_9_mid_training_then_resume_ends_as_an_uninterrupted_run(tiny, tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys
    import time

    opts = dict(strategy="half", epochs=3, deterministic=True, early_stopping=0, **TINY_OPTIONS)
    whole = fit(tiny, runs_dir=tmp_path, name="whole", **opts)
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "headstart",
        "--quiet",
        "train",
        str(tiny),
        "--runs-dir",
        str(tmp_path),
        "--name",
        "killed",
        "--deterministic",
        "--early-stopping",
        "0",
        "--strategy",
        "half",
        "--epochs",
        "3",
        "--input-size",
        "32",
        "--batch-size",
        "8",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (killed / "history.csv").is_file() and len((killed / "history.csv").read_text().splitlines()) >= 2:
                break  # one epoch done: the second is under way
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL and not (killed / "metrics.json").exists()
    resumed = fit(resume=killed)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(resumed.history) == strip(whole.history)
    assert (killed / "confusion_matrix.csv").read_text() == (whole.dir / "confusion_matrix.csv").read_text()
    assert resumed.metrics["correct"] == whole.metrics["correct"]


def test_an_unusable_output_folder_is_exit_2_before_any_work(tiny, tiny_run, tmp_path: Path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    for command in (
        ["train", str(tiny), "--runs-dir", str(a_file)],
        ["train", str(tiny), "--runs-dir", str(a_file / "runs")],
        ["train", str(tiny), "--runs-dir", str(dangling)],
        ["compare", str(tiny), "--strategies", "features", "--runs-dir", str(a_file)],
        ["export", str(tiny_run.dir), "--out", str(a_file / "model.onnx")],
        ["inspect", str(tiny), "--out", str(a_file)],
    ):
        result = CliRunner().invoke(app, command)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in said, (command, result.output)
        assert "is a file, not a folder" in said or "is a link to something that does not exist" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "dangling"]


@pytest.mark.parametrize(
    "strategy, options, mirrored_passes",
    [
        ("features", {}, 1),  # cached features: those of the mirror images computed once, at the evaluation
        ("half", {"augment": False}, 1),  # cached frozen-prefix activations (fp16): the same
        ("full", {}, 0),  # images: mirrored as they are read
    ],
)
def test_train_with_tta_records_both_figures_as_evaluate_finds_them(
    tiny, tmp_path: Path, monkeypatch, strategy, options, mirrored_passes
):
    import numpy as np

    from headstart.evaluation.evaluate import evaluate
    from headstart.training import fit as training
    from headstart.training import frozen_pass as frozen

    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # no mirror images' features kept earlier
    seen, passes, compute, extract = {}, [], training.compute, frozen.extract_features
    monkeypatch.setattr(training, "compute", lambda *a, **kw: seen.setdefault("ev", compute(*a, **kw)))
    monkeypatch.setattr(frozen, "extract_features", lambda *a, **kw: passes.append(kw) or extract(*a, **kw))
    run = fit(tiny, strategy=strategy, epochs=2, tta=True, runs_dir=tmp_path, name="run", **options, **TINY_OPTIONS)
    assert len([kw for kw in passes if kw.get("flip")]) == mirrored_passes  # once, not once an epoch
    saved = json.loads((run.dir / "metrics.json").read_text())
    assert saved["tta_accuracy"] == saved["tta_correct"] / 9 and saved["accuracy"] == saved["correct"] / 9
    assert "tta: true" in (run.dir / "config.yaml").read_text()
    assert "with test-time augmentation" in run.report.read_text()
    # What training computed from its cached inputs is what evaluate computes from the images.
    trained, ev = seen["ev"], evaluate(shutil.copytree(run.dir, tmp_path / "copy"), tta=True)
    tolerance = 2e-3 if strategy == "half" else 1e-5  # the prefix's activations are stored in fp16
    assert np.abs(trained.probs - ev.probs).max() < tolerance
    assert np.abs(trained.tta_probs - ev.tta_probs).max() < tolerance
    assert np.abs(trained.tta_probs - trained.probs).max() > 1e-4


def test_train_and_compare_cli_tta(tiny, tmp_path: Path):
    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "train",
            str(tiny),
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "cli",
            "--tta",
        ],
    )
    assert ok.exit_code == 0, ok.output
    m = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert f"Number of correctly identified images: {m['correct']} of 9" in ok.output
    assert (
        f"With test-time augmentation (mirror image averaged in): {m['tta_accuracy']:.4f} ({m['tta_correct']} of 9)"
        in ok.output
    )
    res = runner.invoke(
        app,
        [
            "compare",
            str(tiny),
            "--strategies",
            "features",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "cmp",
            "--no-advise",
            "--tta",
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "TTA acc" in res.output
    with (tmp_path / "cmp" / "comparison.csv").open() as f:
        [row] = list(csv.DictReader(f))
    tta = json.loads((tmp_path / "cmp" / "features" / "metrics.json").read_text())["tta_accuracy"]
    assert float(row["tta_accuracy"]) == tta
    assert "with test-time augmentation" in (tmp_path / "cmp" / "report.html").read_text()


def test_paths_and_names_are_checked_before_any_decoding(tiny, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cold-cache"))  # decoding would show and fill it
    runner = CliRunner()
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    taken = runner.invoke(app, ["train", str(tiny), "--runs-dir", str(tmp_path / "runs"), "--name", "taken"])
    assert taken.exit_code == 2 and "already exists" in taken.output
    if Path("/sys").is_dir():  # a folder the permission bits call writable that is not (sysfs)
        sysfs = runner.invoke(app, ["train", str(tiny), "--runs-dir", "/sys/headstart-runs"])
        assert sysfs.exit_code == 2 and "cannot write in /sys" in sysfs.output, sysfs.output
    assert not (tmp_path / "cold-cache").exists()


def test_ctrl_c_in_the_first_epoch_then_resume_starts_over_in_place(tiny, tmp_path: Path):
    import time
    import warnings

    from helpers.training import StopMidEpoch

    opts = dict(strategy="features", epochs=2, early_stopping=0, runs_dir=tmp_path, name="r", **TINY_OPTIONS)
    stopped = fit(tiny, callbacks=[StopMidEpoch(0, 1)], **opts)
    assert stopped.interrupted and not stopped.last_checkpoint.exists()
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        resumed = fit(resume=stopped.dir)
    took = time.perf_counter() - started
    assert resumed.dir == stopped.dir and [r["epoch"] for r in resumed.history] == [1, 2]
    assert all(0 < r["seconds"] <= took for r in resumed.history)  # each epoch's own time
    assert not [w for w in seen if "resumable" in str(w.message).lower()]
