"""The learning-rate finder: the suggestion rule, a known-good rate on a toy problem, and
``--lr-find`` through training, the run folder, the report and the CLI."""

from __future__ import annotations

import math
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
from headstart.config import TrainConfig
from headstart.errors import ConfigError
from headstart.training.fit import find_lr, fit
from headstart.training.lr_finder import LRFind, range_test, valley
from helpers.datasets import TINY_OPTIONS

# --- the suggestion rule ------------------------------------------------------------------


def test_valley_is_the_middle_of_the_longest_descent():
    flat, down, up = [1.0] * 30, [1.0 - 0.02 * i for i in range(1, 41)], [0.2 * 1.5**i for i in range(10)]
    assert valley(flat + down + up) == 49  # the descent: from the last flat point (29) to the bottom (69); its middle
    # Noise on the way down does not cut the descent in pieces ...
    wobbly = flat + [x + (0.015 if i % 2 else 0) for i, x in enumerate(down)] + up
    assert 45 <= valley(wobbly) <= 55
    # ... and a lone early dip before a long flat stretch is no descent (a subsequence could hop from it).
    assert valley([1.2, 1.1, 1.05] + flat + down + up) >= 45


def test_valley_has_no_suggestion_when_the_loss_never_falls_and_stops_at_a_diverged_loss():
    assert valley([1.0] * 50) is None and valley([]) is None
    assert valley([float(i) for i in range(20)]) is None  # only rising
    assert valley([3.0, 2.0, 1.0, 0.5, math.nan, 0.1, 0.05, 0.01]) == 1  # the curve ends at the nan (else: 4)


# --- a known-good range on a toy problem --------------------------------------------------


class _Linear(L.LightningModule):
    """Softmax regression, trained with Adam: the head of a features run, on features we choose."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.head = nn.Linear(dim, classes)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.head(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _blobs(n: int = 300, dim: int = 16, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Linearly separable Gaussian blobs, standardised features (as a backbone's pooled features are, roughly)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 1.5
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, dim, generator=g)
    return TensorDataset((x - x.mean(0)) / x.std(0), y)


def _accuracy_after(data: TensorDataset, lr: float, epochs: int = 5) -> float:
    torch.manual_seed(0)
    model = nn.Linear(data.tensors[0].shape[1], 3)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    x, y = data.tensors
    return (model(x).argmax(1) == y).float().mean().item()


def test_the_finder_lands_in_a_known_good_range_on_a_toy_problem():
    torch.manual_seed(0)
    data, module = _blobs(), _Linear(16, 3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    found = range_test(module, loader, TrainConfig(accelerator="cpu", precision="32-true"))
    # Adam on standardised, separable features (measured, 5 epochs of 10 steps): 1e-4 and below barely
    # move (accuracy ~0.05 from this start), 3e-3 reaches 0.92, 1e-2 and up 0.99; the loss of the range test blows up
    # past ~0.3. A rule that took the first, the last or the lowest point fails here.
    assert 1e-4 <= found.suggestion <= 1e-1, found.suggestion
    assert found.suggestion < found.lrs[found.losses.index(min(found.losses))]  # before the bottom, not at it
    assert found.lrs[0] == pytest.approx(1e-7) and len(found.lrs) == len(found.losses) > 50
    assert _accuracy_after(data, found.suggestion) > 0.9 > 0.1 > _accuracy_after(data, 1e-5)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())  # the weights are put back
    # Bias-corrected smoothing: the first point is the first batch's loss (about the untrained head's
    # loss over all the data), not half of it as Lightning's own correction leaves it.
    start = F.cross_entropy(module.head(data.tensors[0]), data.tensors[1]).item()
    assert found.losses[0] == pytest.approx(start, rel=0.25)


# --- through training, the run folder, the report, the CLI ---------------------------------


def test_train_lr_find_records_the_rate_found_and_the_report_shows_the_curve(tiny, tmp_path: Path):
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
            "--lr-find",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "found",
        ],
    )
    assert ok.exit_code == 0, ok.output
    run = tmp_path / "found"
    config = yaml.safe_load((run / "config.yaml").read_text())
    curve = LRFind.read(run / "lr_find.csv", config["lr"])
    assert config["lr_find"] is True
    assert config["lr"] == pytest.approx(curve.lrs[valley(curve.losses)], rel=1e-2)  # the suggestion, 3 figures
    assert config["lr"] != TrainConfig.lr  # not the default left in place
    assert (run / "lr_find.png").is_file()
    html = (run / "report.html").read_text()
    assert "Learning-rate finder" in html and f"{config['lr']:.3g}" in html
    assert f"Learning rate found by the range test: {config['lr']:.3g}" in ok.output
    # A run interrupted before its report (headstart 0.1.0 drew the curve only there) gets it from its CSV.
    (run / "lr_find.png").unlink()
    (run / "report.html").unlink()
    again = fit(resume=run)
    assert (run / "lr_find.png").is_file() and "Learning-rate finder" in again.report.read_text()
    # A run without the finder has no such section, and its config says so.
    plain = fit(tiny, epochs=1, runs_dir=tmp_path, name="plain", **TINY_OPTIONS)
    assert plain.config.lr_find is False and "Learning-rate finder" not in plain.report.read_text()
    assert not plain.lr_find_file.exists()


def test_lr_find_command_prints_the_suggestion_and_writes_the_plot(tiny, tmp_path: Path):
    out = tmp_path / "curve.svg"
    result = CliRunner().invoke(
        app, ["--quiet", "lr-find", str(tiny), "--input-size", "32", "--batch-size", "8", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Suggested learning rate:" in result.output and out.read_text().lstrip().startswith("<?xml")
    assert "Finding best initial lr" not in result.output  # Lightning's own bar stays hidden with --quiet


def test_find_lr_writes_nothing_and_several_devices_are_refused(tiny, tmp_path: Path):
    found = find_lr(tiny, runs_dir=tmp_path, **TINY_OPTIONS)
    assert isinstance(found, LRFind) and found.suggestion and not any(tmp_path.iterdir())
    (tmp_path / "a-file").write_text("")  # no runs folder can be made under it: the finder alone needs none
    assert find_lr(tiny, runs_dir=tmp_path / "a-file" / "runs", **TINY_OPTIONS).suggestion
    (tmp_path / "a-file").unlink()
    with pytest.raises(ConfigError, match="lr_find runs on one device"):
        fit(tiny, lr_find=True, accelerator="cpu", devices="2", runs_dir=tmp_path, **TINY_OPTIONS)
    refused = CliRunner().invoke(
        app, ["train", str(tiny), "--lr-find", "--devices", "0,1", "--runs-dir", str(tmp_path)]
    )
    assert refused.exit_code == 2 and "lr_find runs on one device" in refused.output
    assert not any(tmp_path.iterdir())


def test_the_sweep_leaves_gradual_unfreezing_as_it_found_it(monkeypatch):
    # The sweep's steps span many epochs, and gradual unfreezing opens a group an epoch: whatever it
    # opened, the run starts frozen as planned (a full gradual run with the finder is too slow here).
    from types import SimpleNamespace

    from headstart.training import lr_finder as lr_finder

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
    model[0].requires_grad_(False)
    model.frozen_modules = [model[0]]
    module = SimpleNamespace(model=model, parameters=model.parameters, cfg=TrainConfig())

    def sweep(module, loader, cfg, progress=False):
        module.model[0].requires_grad_(True)  # as unfreeze_top would
        module.model.frozen_modules = []
        return LRFind([1e-3, 1e-2], [1.0, 0.9], 0.002)

    monkeypatch.setattr(lr_finder, "range_test", sweep)
    found, cfg = lr_finder.tune(module, None, world=1)
    assert cfg.lr == 0.002 and module.cfg is cfg and cfg.lr_find is False  # fit's config says lr_find itself
    assert not any(p.requires_grad for p in model[0].parameters()) and model.frozen_modules == [model[0]]
    with pytest.raises(ConfigError, match="one device"):
        lr_finder.tune(module, None, world=2)


def test_compare_takes_the_finder_as_a_lever():
    from headstart.comparison import variant

    assert variant("features+lr_find") == ("features", {"lr_find": True})
    assert variant("features+lr_find=false") == ("features", {"lr_find": False})
    # Its row is a features run: the reading compares no fine-tuning with it.
    from headstart.comparison import reading

    row = dict(correct=252, total=300, seconds_per_epoch=0.3, total_seconds=60)
    text = reading(
        [{**row, "strategy": "features", "accuracy": 0.85}, {**row, "strategy": "features+lr_find", "accuracy": 0.84}]
    )
    assert text.startswith("features reached the best") and "fine-tuning" not in text


def test_the_api_has_find_lr():
    import headstart

    assert headstart.find_lr is find_lr and headstart.LRFind is LRFind


@pytest.mark.parametrize("out", ["lr.jpg", "a-file/lr.png", "folder"])
def test_lr_find_checks_where_the_plot_goes_before_the_sweep(tiny, tmp_path: Path, out: str):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "folder").mkdir()
    result = CliRunner().invoke(app, ["lr-find", str(tiny), "--input-size", "32", "--out", str(tmp_path / out)])
    assert result.exit_code == 2 and "--out" in result.output, result.output
    assert "Suggested" not in result.output and not (tmp_path / "lr.jpg").exists()
