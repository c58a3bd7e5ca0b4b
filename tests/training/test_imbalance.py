"""Imbalanced classes: class weights in the loss, the balanced sampler, and the monitored figure
that picks the best checkpoint and stops early (val_loss, val_accuracy, val_macro_f1)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from sklearn.metrics import f1_score
from torch import nn
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.config import TrainConfig
from headstart.data.samplers import EpochSampler, RankBatches
from headstart.errors import ConfigError
from headstart.evaluation.evaluate import evaluate
from headstart.evaluation.metrics import confusion, macro_f1
from headstart.runs.folder import Run
from headstart.training.fit import fit
from headstart.training.losses import class_weights
from headstart.training.module import TransferModule
from helpers.datasets import TINY_OPTIONS, make_food11
from helpers.ports import free_port_env

COUNTS = [12, 4, 2]  # training images per class: 6 : 1, about Food-11's 5.4 : 1
LABELS = [c for c, n in enumerate(COUNTS) for _ in range(n)]


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    return make_food11(
        tmp_path_factory.mktemp("imbalanced") / "data",
        {"training": COUNTS, "validation": [3, 3, 3], "evaluation": [2, 2, 2]},
    )


class _Module(L.Callback):
    def on_train_start(self, trainer, module):
        self.module = module


def _history(run_dir: Path) -> list[dict]:
    with (run_dir / "history.csv").open() as f:
        return [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]


def test_auto_class_weights_are_inverse_frequency_and_reach_the_loss(imbalanced, tmp_path: Path):
    capture = _Module()
    run = fit(
        imbalanced, class_weights="auto", epochs=1, runs_dir=tmp_path, name="w", callbacks=[capture], **TINY_OPTIONS
    )
    module = capture.module
    # w_c = N / (C * n_c): 18 / (3 * [12, 4, 2]); every class weighs as much in total, mean 1 over the images.
    expected = torch.tensor([0.5, 1.5, 3.0])
    assert torch.allclose(module.train_loss_fn.weight.cpu(), expected)
    assert torch.allclose(class_weights(LABELS, 3), expected) and float(expected[LABELS].mean()) == pytest.approx(1.0)
    # The training loss of a batch, by hand: each image's cross-entropy against the smoothed target
    # q = (1 - eps) one-hot + eps / C, each class's term weighted by w_c; the mean over the images.
    eps = run.config.label_smoothing
    assert eps > 0  # label smoothing still applies, weighted
    logits, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2, 0, 1])
    q = (1 - eps) * nn.functional.one_hot(y, 3) + eps / 3
    by_hand = (-(q * expected * logits.log_softmax(1)).sum(1)).mean()
    assert float(module.train_loss(logits, y)) == pytest.approx(float(by_hand), rel=1e-6)
    unweighted = (-(q * logits.log_softmax(1)).sum(1)).mean()
    assert float(module.train_loss(logits, y)) != pytest.approx(float(unweighted), rel=1e-3)
    # Recorded: the mode in config.yaml, the weights in metrics.json.
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["class_weights"] == "auto"
    saved = json.loads((run.dir / "metrics.json").read_text())["class_weights"]
    assert list(saved.values()) == pytest.approx([0.5, 1.5, 3.0])


def test_without_class_weights_the_loss_is_plain_cross_entropy():
    cfg = TrainConfig(label_smoothing=0.1)
    module = TransferModule(nn.Linear(4, 3), cfg, 1, {}, trunk=nn.Identity())
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    assert module.train_loss_fn.weight is None
    assert torch.allclose(module.train_loss(logits, y), nn.functional.cross_entropy(logits, y, label_smoothing=0.1))


def test_the_balanced_sampler_draws_every_class_alike_seeded_per_epoch():
    data = list(range(len(LABELS)))
    sampler = EpochSampler(data, seed=3, labels=LABELS)
    epochs = []
    for epoch in range(300):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert all(len(e) == len(data) for e in epochs)  # the same epoch length as a shuffle
    drawn = Counter(LABELS[i] for e in epochs for i in e)
    assert all(abs(drawn[c] / (300 * 18) - 1 / 3) < 0.03 for c in range(3)), drawn  # 12 : 4 : 2 drawn 1 : 1 : 1
    assert len({tuple(e) for e in epochs}) == 300  # a new draw every epoch...
    again = EpochSampler(data, seed=3, labels=LABELS)
    again.set_epoch(7)
    assert list(again) == epochs[7]  # ...that depends only on (seed, epoch): a resumed run draws the same
    assert list(EpochSampler(data, seed=4, labels=LABELS)) != epochs[0]
    plain = Counter(LABELS[i] for i in EpochSampler(data, seed=3))
    assert [plain[c] for c in range(3)] == COUNTS  # random: a shuffle, each image once


def test_two_ranks_share_each_balanced_global_batch():
    data = list(range(len(LABELS)))
    one = list(RankBatches(EpochSampler(data, 0, LABELS), 5, 0, 1))
    two = [list(RankBatches(EpochSampler(data, 0, LABELS), 5, r, 2)) for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) == 4
    for whole, a, b in zip(one, *two):
        # Each rank takes its own positions of the same global batch (an image drawn twice may be on both).
        assert a == whole[0::2] and b == whole[1::2] and sorted(a + b) == sorted(whole)


def test_macro_f1_from_a_confusion_matrix_is_sklearns():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (50,), generator=g)
    pred = torch.randint(0, 4, (50,), generator=g)
    pred[pred == 3] = 2  # class 3 is never predicted; class 4 neither occurs nor is predicted
    matrix = confusion(y[:20], pred[:20], 5) + confusion(y[20:], pred[20:], 5)  # two ranks' sums
    assert macro_f1(matrix) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)


def test_monitor_val_accuracy_picks_the_best_val_accuracy_for_best_ckpt_and_stopping(imbalanced, tmp_path: Path):
    # lr 0.01, seed 1: here the lowest val_loss (epoch 1) and the best val_accuracy fall on different epochs.
    run = fit(
        imbalanced,
        monitor="val_accuracy",
        epochs=6,
        early_stopping=3,
        lr=0.01,
        seed=1,
        head_dropout=0.0,
        runs_dir=tmp_path,
        name="acc",
        **TINY_OPTIONS,
    )
    rows = _history(run.dir)
    best = max(rows, key=lambda r: r["val_accuracy"])  # the first of the best
    assert run.metrics["best_epoch"] == best["epoch"] == Run.load(run.dir).metrics["best_epoch"]
    ckpt = torch.load(run.best_checkpoint, weights_only=True, map_location="cpu")
    assert ckpt["epoch"] + 1 == best["epoch"]  # best.ckpt holds that epoch
    kept = [v for k, v in ckpt["callbacks"].items() if k.startswith("_Checkpoint")][0]
    assert float(kept["best_model_score"]) == pytest.approx(best["val_accuracy"])
    assert any(
        k.startswith("EarlyStopping") and "'monitor': 'val_accuracy'" in k and "'mode': 'max'" in k
        for k in ckpt["callbacks"]
    )
    # Early stopping on val_accuracy: it stops 3 epochs after the last improvement, or at the end.
    improved = [r["epoch"] for i, r in enumerate(rows) if all(r["val_accuracy"] > p["val_accuracy"] for p in rows[:i])]
    assert len(rows) == min(6, improved[-1] + 3)


def test_cli_flags_record_and_val_macro_f1_is_sklearns_on_validation(imbalanced, tmp_path: Path):
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(imbalanced),
            "--class-weights",
            "auto",
            "--sampler",
            "balanced",
            "--monitor",
            "val_macro_f1",
            "--epochs",
            "3",
            "--early-stopping",
            "0",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "f1",
        ],
    )
    assert result.exit_code == 0, result.output
    run = Run.load(tmp_path / "f1")
    assert (run.config.class_weights, run.config.sampler, run.config.monitor) == ("auto", "balanced", "val_macro_f1")
    rows = _history(run.dir)
    best = max(rows, key=lambda r: r["val_macro_f1"])
    assert run.metrics["best_epoch"] == best["epoch"]
    # val_macro_f1 of the best epoch is scikit-learn's macro F1 of best.ckpt's validation predictions.
    ev = evaluate(run.dir, split="validation")
    assert best["val_macro_f1"] == pytest.approx(f1_score(ev.targets, ev.predictions, average="macro"), abs=1e-6)
    report = run.report.read_text()
    assert "highest val macro f1" in report and "Class weights of the training loss" in report
    for key in ("class_weights", "sampler", "monitor"):
        assert f"<td>{key}</td>" in report
    # A choice outside the list: exit 2 from the CLI, a ConfigError naming it from Python.
    bad = CliRunner().invoke(app, ["train", str(imbalanced), "--monitor", "val_f1"])
    assert bad.exit_code == 2 and "val_f1" in bad.output
    with pytest.raises(ConfigError, match="sampler must be one of: random, balanced. Received: sampler='oversample'"):
        TrainConfig(sampler="oversample")


def test_compare_passes_the_imbalance_options_to_every_run(imbalanced, tmp_path: Path):
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(imbalanced),
            "--strategies",
            "features",
            "--no-advise",
            "--class-weights",
            "auto",
            "--sampler",
            "balanced",
            "--monitor",
            "val_accuracy",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "c",
        ],
    )
    assert result.exit_code == 0, result.output
    cfg = Run.load(tmp_path / "c" / "features").config
    assert (cfg.class_weights, cfg.sampler, cfg.monitor) == ("auto", "balanced", "val_accuracy")


def test_an_old_history_without_val_macro_f1_still_reads(tiny_run, tmp_path: Path):
    import shutil

    old = shutil.copytree(tiny_run.dir, tmp_path / "old")
    lines = (old / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    drop = header.index("val_macro_f1")
    (old / "history.csv").write_text(
        "\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines) + "\n"
    )
    run = Run.load(old)
    assert len(run.history) == len(tiny_run.history) and "val_macro_f1" not in run.history[0]
    assert run.config.monitor == "val_loss"


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_two_ranks_weighted_and_balanced_train_as_one_process(imbalanced, tmp_path: Path):
    # Batches of 7 (18 images: 7, 7, 4): shares of 4 and 3, 2 and 2; each rank's weighted loss a mean
    # over its share, weighed by the share's size, gives the global batch's loss.
    (tmp_path / "nodropout.yaml").write_text("head_dropout: 0.0\n")

    def train(devices: int, name: str) -> list[dict]:
        command = [
            sys.executable,
            "-m",
            "headstart",
            "train",
            str(imbalanced),
            "--config",
            str(tmp_path / "nodropout.yaml"),
            "--accelerator",
            "cpu",
            "--devices",
            str(devices),
            "--input-size",
            "32",
            "--batch-size",
            "7",
            "--epochs",
            "2",
            "--class-weights",
            "auto",
            "--sampler",
            "balanced",
            "--monitor",
            "val_macro_f1",
            "--runs-dir",
            str(tmp_path / name),
            "--name",
            name,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=free_port_env())
        assert done.returncode == 0, done.stderr[-3000:]
        return _history(tmp_path / name / name)

    two = train(2, "two")
    # The reference in this process: the same options as one rank would take them.
    fit(
        imbalanced,
        config_file=tmp_path / "nodropout.yaml",
        accelerator="cpu",
        devices="1",
        input_size=32,
        batch_size=7,
        epochs=2,
        class_weights="auto",
        sampler="balanced",
        monitor="val_macro_f1",
        runs_dir=tmp_path / "one",
        name="one",
    )
    one = _history(tmp_path / "one" / "one")
    for a, b in zip(two, one):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a, b)
