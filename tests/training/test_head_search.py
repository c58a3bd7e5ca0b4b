"""The head search: the candidates fitted on the cached features, the choice made on the validation split
alone (reproducibly, and only beyond chance), and the run training what was chosen."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.config import TrainConfig, resolve_config
from headstart.errors import ConfigError
from headstart.training import fit as fit_module
from headstart.training.fit import fit
from headstart.training.head_search import CONFIDENCE, candidates, search_heads, win_share
from helpers.datasets import TINY_OPTIONS, photo

FAST = TrainConfig(epochs=8, batch_size=16)


def _noisy_linear(n: int, seed: int, dims: int = 64) -> TensorDataset:
    """3 classes, each a shifted mean on one of the first 3 features; 61 features of noise as strong."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat(n)
    x = torch.randn(len(y), dims, generator=g)
    x[:, :3] = nn.functional.one_hot(y, 3).float() * 2 + torch.randn(len(y), 3, generator=g) * 0.7
    return TensorDataset(x, y)


def _xor(n: int, seed: int, dims: int = 16) -> TensorDataset:
    """2 classes as opposite corners of a square (XOR): no linear head can tell them apart."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    k = torch.arange(4).repeat(n)
    x = torch.randn(len(k), dims, generator=g) * 0.3
    x[:, :2] += corners[k] * 2
    return TensorDataset(x, (k >= 2).long())


def test_the_candidates_are_the_runs_head_over_rates_and_decays_then_linear_heads():
    found = candidates(TrainConfig())
    assert found[0] == ("head 100, lr 0.001, wd 0.01", {})  # the run's own, first: it wins a tie
    grid = {(o["lr"], o["weight_decay"]) for _, o in found[1:6]}
    assert grid == {(1e-3 * f, w) for f in (1 / 3, 1.0, 3.0) for w in (0.01, 0.1)} - {(1e-3, 0.01)}
    linear = [o for _, o in found[6:]]
    assert [o["weight_decay"] for o in linear] == [1e-4, 1e-3, 1e-2, 1e-1]
    assert all(o["optimizer"] == "lbfgs" and o["head_hidden"] == 0 and o["head_dropout"] == 0 for o in linear)


@pytest.mark.parametrize(
    "data, classes, wanted",
    [
        (_noisy_linear, 3, "linear"),  # a linear boundary among strong noise: the regularised logistic regression
        (_xor, 2, "head"),  # XOR: only the head with a hidden layer separates it
    ],
)
def test_the_clearly_best_candidate_is_chosen(data, classes: int, wanted: str):
    found = search_heads(FAST, data(20, 0), data(40, 1), classes)
    best = min(found.trials, key=lambda t: t.figures["val_loss_calibrated"])
    assert found.chosen is best and found.chosen.name.startswith(wanted), found.to_csv()
    assert found.confidence >= CONFIDENCE
    assert best.figures["val_accuracy"] >= 0.75  # and it is good, not merely the least bad
    losers = [t for t in found.trials if not t.name.startswith(wanted)]
    assert all(t.figures["val_loss_calibrated"] > best.figures["val_loss_calibrated"] + 0.1 for t in losers)
    # Calibrated: no nearby temperature gives a candidate a lower validation loss (a head at chance would take
    # an infinite one: those end at the grid's edge).
    y = (data(40, 1)).tensors[1]
    for t in (t for t in found.trials if 0.02 < t.figures["temperature"] < 50):
        for f in (0.8, 1.25):
            worse = nn.functional.cross_entropy(t.logits / (t.figures["temperature"] * f), y).item()
            assert worse >= t.figures["val_loss_calibrated"] - 1e-6


def test_the_choice_is_reproducible_with_a_seed():
    train, val = _noisy_linear(20, 0), _noisy_linear(40, 1)
    one, two = (search_heads(FAST, train, val, 3) for _ in range(2))
    assert one.chosen.name == two.chosen.name
    for a, b in zip(one.trials, two.trials):
        assert a.best_epoch == b.best_epoch
        assert a.figures == pytest.approx(b.figures, rel=1e-5)


def test_a_change_needs_a_win_beyond_chance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), y] = 0.8
    assert win_share(good, good, y, "val_loss") == 0  # a tie is no win
    worse = good.copy()
    worse[np.arange(200), y] = 0.5
    for monitor in ("val_loss", "val_accuracy", "val_macro_f1"):
        flipped = worse.copy()
        flipped[:20] = np.roll(flipped[:20], 1, axis=1)  # 20 images now wrong
        assert win_share(good, flipped, y, monitor) == 1.0
    # Two equally good heads that err on different images: a coin toss, never a change.
    a, b = good.copy(), good.copy()
    a[:10] = np.roll(a[:10], 1, axis=1)
    b[10:20] = np.roll(b[10:20], 1, axis=1)
    assert 0.3 < win_share(a, b, y, "val_accuracy") < CONFIDENCE


def _tiny_copy(tiny: Path, where: Path, scramble_evaluation: bool) -> Path:
    data = shutil.copytree(tiny, where)
    if scramble_evaluation:  # other photos, other labels: a search that looked would see it
        for i, f in enumerate(sorted((data / "evaluation").iterdir())):
            f.unlink()
            photo(1000 + i).save(data / "evaluation" / f"{(i + 1) % 3}_{900 + i}.jpg")
    return data


def _search_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "head_search.csv").open() as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_the_run_trains_the_chosen_head_and_the_evaluation_split_is_never_read(tiny, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    runs = {
        scramble: fit(
            _tiny_copy(tiny, tmp_path / f"data{int(scramble)}", scramble),
            strategy="features",
            epochs=4,
            runs_dir=tmp_path / "runs",
            name=f"r{int(scramble)}",
            **TINY_OPTIONS,
        )
        for scramble in (False, True)
    }
    run = runs[False]
    # The same search, whatever the evaluation split holds.
    assert _search_rows(runs[False].dir) == _search_rows(runs[True].dir)
    rows = _search_rows(run.dir)
    assert len(rows) == 10 and sum(int(r["chosen"]) for r in rows) == 1
    chosen = next(r for r in rows if r["chosen"] == "1")
    # Recorded: metrics.json, config.yaml (a rerun trains the choice without searching), the report.
    saved = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert saved["head_choice"]["chosen"] == chosen["candidate"] == run.metrics["head_search"]["chosen"]
    for key, value in saved["head_choice"]["taken"].items():
        assert saved[key] == value
    assert "Head search" in run.report.read_text() and chosen["candidate"] in run.report.read_text()
    # The run trained the chosen head as the search did: the same figures at the same epoch.
    epoch = int(chosen["best_epoch"])
    assert run.history[epoch - 1]["val_loss"] == pytest.approx(float(chosen["val_loss"]), rel=1e-4)
    assert run.metrics["best_epoch"] == epoch


def test_the_seed_recipe_and_head_search_off_train_the_head_as_given(tiny, tmp_path: Path):
    assert resolve_config("seed").head_search == "off"
    result = CliRunner().invoke(
        app,
        ["train", str(tiny), "--epochs", "1", "--input-size", "32", "--batch-size", "8", "--head-search", "off"]
        + ["--runs-dir", str(tmp_path), "--name", "off"],
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "off" / "head_search.csv").exists()
    assert yaml.safe_load((tmp_path / "off" / "config.yaml").read_text())["head_choice"] is None
    bad = CliRunner().invoke(app, ["train", str(tiny), "--head-search", "maybe"])
    assert bad.exit_code == 2 and "maybe" in bad.output


def test_lbfgs_trains_a_logistic_regression_on_the_features(tiny, tmp_path: Path):
    config = tmp_path / "lbfgs.yaml"
    config.write_text("optimizer: lbfgs\nlr: 1.0\nhead_hidden: 0\nhead_dropout: 0.0\nweight_decay: 0.001\n")
    result = CliRunner().invoke(
        app,
        ["train", str(tiny), "--config", str(config), "--epochs", "3", "--input-size", "32"]
        + ["--runs-dir", str(tmp_path), "--name", "lr"],
    )
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "lr" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    head = {k: v.shape for k, v in state.items() if k.startswith("model.head")}
    assert head == {"model.head.0.weight": (3, 1280), "model.head.0.bias": (3,)}  # one linear layer
    with (tmp_path / "lr" / "history.csv").open() as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert losses[-1] < losses[0]
    with pytest.raises(ConfigError, match="lbfgs.*half"):
        TrainConfig(optimizer="lbfgs", strategy="half")
    with pytest.raises(ConfigError, match="lr_find"):
        TrainConfig(optimizer="lbfgs", lr_find=True)


class _HeadAtStart(L.Callback):
    def on_train_start(self, trainer, module):
        self.head = {k: v.clone() for k, v in module.model.head.state_dict().items()}


def test_gradual_starts_from_the_chosen_heads_trained_weights(tiny, tmp_path: Path, monkeypatch):
    found, searched_weights = [], []

    def spy(*args, **kwargs):
        found.append(search_heads(*args, **kwargs))
        searched_weights.append({k: v.clone() for k, v in found[-1].chosen.head.state_dict().items()})
        return found[-1]

    monkeypatch.setattr(fit_module, "search_heads", spy)
    at_start = _HeadAtStart()
    run = fit(tiny, strategy="gradual", epochs=2, runs_dir=tmp_path, name="g", callbacks=[at_start], **TINY_OPTIONS)
    chosen = found[0].chosen
    assert run.config.head_choice["chosen"] == chosen.name
    trained = searched_weights[0]  # as the search left it (the run trains that very module on)
    assert at_start.head.keys() == trained.keys()
    assert all(torch.equal(at_start.head[k], trained[k]) for k in trained)


def test_an_edited_head_choice_is_refused():
    with pytest.raises(ConfigError, match="head_choice"):
        TrainConfig(head_choice={"chosen": "linear, L2 0.1", "taken": {}, "candidates": "all of them"})
