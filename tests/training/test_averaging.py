"""Weight averaging (``average``: ema, swa): what is averaged, when, what validation and the checkpoints see.

The mechanics run on a toy LightningModule (a frozen layer, a BatchNorm and a head; a few steps on
random numbers), where every averaged value can be computed by hand; then once through ``fit``
on the tiny fixture. Whether averaging helps accuracy is measured in docs/benchmarks.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.comparison import variant
from headstart.config import TrainConfig
from headstart.errors import ConfigError
from headstart.training.averaging import Averaging, ema_decay, swa_start
from headstart.training.fit import fit
from helpers.datasets import TINY_OPTIONS

STEPS = 4  # optimizer steps an epoch: 16 samples, batches of 4


class Toy(L.LightningModule):
    """A frozen layer, a BatchNorm and a head that train; it notes the head's weights as training
    and validation see them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)
        self.in_training, self.in_validation = [], []  # the head's weight at each epoch's first batch

    def forward(self, x):
        return self.head(self.bn(self.frozen(x)))

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.in_training.append(self.head.weight.detach().clone())
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.in_validation.append(self.head.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.5)


class Trajectory(L.Callback):
    """The head's weight and the BatchNorm's running mean before training and after every step."""

    def on_train_start(self, trainer, module):
        self.weights, self.means = [module.head.weight.detach().clone()], [module.bn.running_mean.clone()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.weights.append(module.head.weight.detach().clone())
        self.means.append(module.bn.running_mean.clone())


def _train(kind: str, epochs: int, tmp_path: Path):
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(4 * STEPS, 4, generator=g), torch.randint(0, 2, (4 * STEPS,), generator=g))
    module, averaging, trajectory = Toy(), Averaging(kind), Trajectory()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[trajectory, averaging],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    return trainer, module, averaging, trajectory


def _by_hand_ema(values: list[torch.Tensor], total: int) -> list[torch.Tensor]:
    """The EMA after each step: starts at the weights before training, decays as ``ema_decay`` says."""
    average, out = values[0].clone(), []
    for t, v in enumerate(values[1:]):
        d = ema_decay(t, total)
        average = d * average + (1 - d) * v
        out.append(average)
    return out


def test_ema_decay_warms_up_then_keeps_a_tenth_of_the_run():
    assert ema_decay(0, 1000) == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the first average is mostly the weights
    assert ema_decay(10, 1000) == pytest.approx(11 / 20)
    assert ema_decay(10_000, 1000) == pytest.approx(1 - 1 / 100)  # a window of 100 steps, a tenth of 1,000
    assert ema_decay(10_000, 30) == pytest.approx(0.9)  # short runs: never a window under 10 steps
    assert [swa_start(e) for e in (1, 4, 8, 15)] == [0, 3, 6, 11]  # the last quarter, at least one epoch


def test_ema_is_the_hand_computed_average_and_frozen_weights_are_not_copied(tmp_path: Path):
    trainer, module, averaging, trajectory = _train("ema", 3, tmp_path)
    # The trained part only: the head, the BatchNorm's affine weights and its statistics; not the frozen layer.
    assert sorted(averaging.names) == [
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.weight",
        "head.bias",
        "head.weight",
    ]
    assert sorted(averaging.state_dict()["averaged"]) == sorted(averaging.names)
    total = 3 * STEPS
    assert averaging.updates == total and len(trajectory.weights) == total + 1
    expected = _by_hand_ema(trajectory.weights, total)
    averaged = dict(zip(averaging.names, averaging.averaged))
    torch.testing.assert_close(averaged["head.weight"], expected[-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        averaged["bn.running_mean"], _by_hand_ema(trajectory.means, total)[-1], rtol=1e-5, atol=1e-6
    )
    assert not torch.allclose(expected[-1], trajectory.weights[-1], atol=1e-4)  # an average, not the last weights
    # Validation saw the average at each epoch's end; the next epoch trained on on from the raw weights.
    for epoch in range(3):
        torch.testing.assert_close(module.in_validation[epoch], expected[STEPS * (epoch + 1) - 1], rtol=1e-5, atol=1e-6)
    for epoch in (1, 2):
        assert torch.equal(module.in_training[epoch], trajectory.weights[STEPS * epoch])
    assert torch.equal(module.head.weight, trajectory.weights[-1])  # training ends on the raw weights


def test_swa_averages_the_last_quarter_of_the_epochs_equally(tmp_path: Path):
    trainer, module, averaging, trajectory = _train("swa", 8, tmp_path)
    end_of = [trajectory.weights[STEPS * (e + 1)] for e in range(8)]  # the weights at each epoch's end
    assert averaging.updates == 2  # epochs 7 and 8 (0-based 6 and 7)
    averaged = dict(zip(averaging.names, averaging.averaged))
    torch.testing.assert_close(averaged["head.weight"], (end_of[6] + end_of[7]) / 2, rtol=1e-5, atol=1e-6)
    # Before the last quarter there is no average: validation sees the raw weights.
    assert all(torch.equal(module.in_validation[e], end_of[e]) for e in range(7))
    torch.testing.assert_close(module.in_validation[7], (end_of[6] + end_of[7]) / 2, rtol=1e-5, atol=1e-6)
    # A checkpoint holds the average as the model, the raw weights in the callback's state.
    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    torch.testing.assert_close(saved["state_dict"]["head.weight"], averaged["head.weight"])
    assert torch.equal(saved["callbacks"]["Averaging"]["raw"]["head.weight"], module.head.weight)
    assert torch.equal(saved["state_dict"]["frozen.weight"], module.frozen.weight)


def test_fit_with_ema_keeps_the_average_in_best_ckpt_and_resumes_exactly(tiny, tmp_path: Path):
    from helpers.training import StopAfter

    opts = dict(
        strategy="features",
        epochs=3,
        average="ema",
        deterministic=True,
        early_stopping=0,
        runs_dir=tmp_path,
        **TINY_OPTIONS,
    )
    whole = fit(tiny, name="whole", **opts)
    assert whole.metrics["average"] == "ema" and whole.config.average == "ema"
    assert "weights averaged (ema)" in whole.report.read_text()
    best = torch.load(whole.best_checkpoint, weights_only=True)
    state, averaging = best["state_dict"], best["callbacks"]["Averaging"]
    assert sorted(averaging["averaged"]) == sorted(k for k in state if k.startswith("model.head."))  # the head only
    for name, average in averaging["averaged"].items():
        assert torch.equal(state[name], average)
    assert not all(torch.equal(averaging["raw"][n], state[n]) for n in averaging["raw"])
    # Interrupted after 2 epochs and resumed: the raw weights and the average continue where they were.
    stopped = fit(tiny, name="stopped", callbacks=[StopAfter(2)], **opts)
    moved = shutil.move(stopped.dir, tmp_path / "elsewhere")
    resumed = fit(resume=moved)
    assert [r["val_loss"] for r in resumed.history] == pytest.approx([r["val_loss"] for r in whole.history], abs=1e-6)
    assert resumed.metrics["correct"] == whole.metrics["correct"]
    last = [torch.load(r.last_checkpoint, weights_only=True)["state_dict"] for r in (whole, resumed)]
    assert all(torch.allclose(last[0][k], last[1][k], atol=1e-6) for k in averaging["averaged"])


def test_average_is_checked_and_on_the_cli_and_in_compare(tiny, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"average must be one of: none, ema, swa. Received: average='mean'"):
        TrainConfig(average="mean")
    assert variant("features+average=swa") == ("features", {"average": "swa"})
    result = CliRunner().invoke(
        app,
        [
            "--quiet",
            "train",
            str(tiny),
            "--average",
            "swa",
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
        ],
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())["average"] == "swa"
    assert (
        torch.load(tmp_path / "cli" / "checkpoints" / "best.ckpt", weights_only=True)["callbacks"]["Averaging"][
            "updates"
        ]
        == 1
    )
    bad = CliRunner().invoke(app, ["train", str(tiny), "--average", "mean", "--runs-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "'mean' is not one of" in bad.output


def test_half_averages_the_open_groups_and_their_batchnorm_statistics_only(tiny, tmp_path: Path):
    run = fit(
        tiny, strategy="half", epochs=1, average="ema", augment=False, runs_dir=tmp_path, name="half", **TINY_OPTIONS
    )
    saved = torch.load(run.best_checkpoint, weights_only=True)
    averaged = set(saved["callbacks"]["Averaging"]["averaged"])
    trained = {f"model.{n}" for n, p in load_model_params(run) if p.requires_grad}
    assert {n for n in averaged if not n.endswith(("running_mean", "running_var"))} == trained
    stats = {n.rsplit(".", 1)[0] for n in averaged if n.endswith("running_mean")}
    assert stats and all(f"{s}.weight" in trained for s in stats)  # only the BatchNorm layers that train
    assert any(
        n.endswith("running_mean") and n.rsplit(".", 1)[0] + ".weight" not in trained for n in saved["state_dict"]
    )  # the frozen ones exist, and were left out


def load_model_params(run):
    """The run's model, frozen as its strategy says, as (name, parameter)."""
    from headstart.training.fit import build_model

    model, _ = build_model(run.config, 3)
    return list(model.named_parameters())
