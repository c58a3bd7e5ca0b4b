"""headstart.advice.strategy (headstart advise): the measurements on data whose answer is known, the four
cases, --strategy auto."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headstart.advice import strategy as A
from headstart.cli.main import app
from helpers.datasets import PHOTOS

SIZE = 64


def _crops(c: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n different crops (position and scale) of photo c: real photos of one subject per class."""
    arr = PHOTOS[c]
    h, w = arr.shape[:2]
    out = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(0.5, 0.9))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out.append(np.asarray(Image.fromarray(arr[top : top + side, left : left + side]).resize((SIZE, SIZE))))
    return out


def make_dataset(root: Path, kind: str, per_class: int = 24, seed: int = 0) -> Path:
    """A food11-layout dataset of 4 classes, 64 px.

    - 'photos': crops of one real photo per class (chelsea, coffee, astronaut, rocket): like the
      pretraining data;
    - 'shuffled': shuffled pixels, class c drawing 20 %, 40 %, 60 % or 80 % of them from a crop of
      chelsea and the rest from one of coffee. The classes are learnable (by colour proportions),
      but nothing in them is a shape a network learned on photos: built to be different.
    """
    rng = np.random.default_rng(seed)
    for c in range(len(PHOTOS)):
        for i, img in enumerate(_crops(c, per_class + 8, rng)):
            if kind == "shuffled":
                a, b = (_crops(j, 1, rng)[0].reshape(-1, 3) for j in (0, 1))
                k = int(len(a) * (0.2 + 0.2 * c))
                flat = np.concatenate([a[rng.permutation(len(a))[:k]], b[rng.permutation(len(b))[: len(b) - k]]])
                img = flat[rng.permutation(len(flat))].reshape(img.shape)
            split = "training" if i < per_class else "validation" if i < per_class + 4 else "evaluation"
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / f"{c}_{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("photos"), "photos")


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("shuffled"), "shuffled")


def test_knn_probe_on_known_features():
    labels = torch.arange(4).repeat_interleave(10)
    separated = torch.nn.functional.one_hot(labels, 4).float() + 0.01 * torch.randn(
        40, 4, generator=torch.Generator().manual_seed(0)
    )
    assert A.knn_accuracy(separated, labels) == 1.0
    noise = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    assert A.knn_accuracy(noise, labels) < 0.5
    assert A.separability(0.25, 4) == 0.0 and A.separability(1.0, 4) == 1.0
    # Over several blocks of rows: the same answer as the whole similarity matrix at once.
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 7, (2500,), generator=g)
    feats = torch.nn.functional.one_hot(labels, 7).float() + 0.5 * torch.randn(2500, 7, generator=g)
    x = torch.nn.functional.normalize(feats, dim=1)
    sim = (x @ x.T).fill_diagonal_(-float("inf"))
    votes = torch.nn.functional.one_hot(labels[sim.topk(5, dim=1).indices], 7).sum(1).float()
    votes += 1e-3 * torch.nn.functional.one_hot(labels[sim.topk(1, dim=1).indices[:, 0]], 7)
    whole = float((votes.argmax(1) == labels).float().mean())
    # Blocks and the whole matrix may round a similarity differently, which can swap two near-equal
    # neighbours: a few rows of 2500 at most (a row is 4e-4), where wrong blocks would be far off.
    assert A.knn_accuracy(feats, labels) == pytest.approx(whole, abs=2e-3) and 0.5 < whole < 1.0


def test_photos_are_similar_and_shuffled_pixels_are_different(photos, shuffled):
    like = A.advise(photos, input_size=SIZE)
    unlike = A.advise(shuffled, input_size=SIZE)
    m, u = like.measurements, unlike.measurements
    assert m["final_separability"] >= 0.9  # frozen ImageNet features separate real photos
    assert u["final_separability"] < A.SIMILAR_SEPARABILITY  # ... and poorly shuffled pixels,
    assert u["earlier_knn"] > u["final_knn"] + A.EARLIER_MARGIN  # which earlier, generic layers separate better
    assert m["imagenet_confidence"] > u["imagenet_confidence"]  # the ImageNet classifier is surer on photos
    assert (like.size, like.similarity, like.strategy) == ("small", "similar", "features")
    assert (unlike.size, unlike.similarity, unlike.strategy) == ("small", "different", "half")
    assert "train only the final layers" in like.rule and "fix the earlier layers" in unlike.rule


def test_size_decides_between_the_cases(monkeypatch, photos, shuffled):
    monkeypatch.setattr(A, "SMALL_PER_CLASS", 10)  # 24 images per class now count as large
    assert A.advise(photos, input_size=SIZE).strategy == "full"
    large_different = A.advise(shuffled, input_size=SIZE)
    assert (large_different.case, large_different.strategy) == (
        "large data, different from the pretraining data",
        "full",
    )
    assert (
        large_different.recommendation["backbone_lr"] > A.advise(photos, input_size=SIZE).recommendation["backbone_lr"]
    )


def test_advise_cli_table_and_json(photos, monkeypatch):
    # One measurement, printed both ways: the second call gets the first call's advice.
    measured = {}
    real = A.advise
    monkeypatch.setattr(A, "advise", lambda *a, **k: measured.setdefault("advice", real(*a, **k)))
    runner = CliRunner()
    res = runner.invoke(app, ["advise", str(photos), "--input-size", str(SIZE)])
    assert res.exit_code == 0, res.output
    assert "small data, similar to the pretraining data" in res.stdout
    assert "train only the final layers" in res.stdout and "--strategy features" in res.stdout
    res = runner.invoke(app, ["advise", str(photos), "--input-size", str(SIZE), "--json"])
    body = json.loads(res.stdout)
    assert body["recommendation"]["strategy"] == "features" and body["measurements"]["classes"] == 4
    res = runner.invoke(app, ["advise", str(photos / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_strategy_auto_trains_the_advised_strategy_and_records_it(shuffled, tmp_path):
    from headstart.training.fit import fit

    run = fit(shuffled, strategy="auto", input_size=SIZE, epochs=1, runs_dir=tmp_path, name="auto")
    assert run.config.strategy == "half" and run.config.augment is True
    assert run.config.advice["case"] == "small data, different from the pretraining data"
    saved = (tmp_path / "auto" / "config.yaml").read_text()
    assert "strategy: half" in saved and "fix the earlier layers" in saved
    report = (tmp_path / "auto" / "report.html").read_text()
    assert "Advice: small data, different from the pretraining data" in report
    # Advising does not disturb the random state: the same training as naming the strategy.
    named = fit(shuffled, strategy="half", input_size=SIZE, epochs=1, runs_dir=tmp_path, name="named")
    assert [r["loss"] for r in named.history] == pytest.approx([r["loss"] for r in run.history], rel=1e-5)
    # Options asked for explicitly win over the advice's.
    run = fit(shuffled, strategy="auto", input_size=SIZE, epochs=1, augment=False, runs_dir=tmp_path, name="explicit")
    assert run.config.strategy == "half" and run.config.augment is False


def test_compare_shows_the_advice_beside_the_result(shuffled, tmp_path):
    from headstart.comparison import compare

    result = compare(shuffled, ["features", "auto"], input_size=SIZE, epochs=1, runs_dir=str(tmp_path), name="cmp")
    assert list(result.runs) == ["features", "half"]  # auto is the advised strategy, half
    rows = {r["strategy"]: r for r in result.rows}
    assert "The rules (small data, different from the pretraining data) predicted half" in result.reading
    if rows["half"]["accuracy"] >= rows["features"]["accuracy"]:
        assert "and it won" in result.reading
    else:
        gap = 100 * (rows["features"]["accuracy"] - rows["half"]["accuracy"])
        assert f"features won, {gap:.1f} points ahead of it" in result.reading
    html = (result.dir / "report.html").read_text()
    assert "Advice: small data, different from the pretraining data" in html and "(advised)" in html
    assert json.loads((result.dir / "advice.json").read_text())["recommendation"]["strategy"] == "half"
    with (result.dir / "comparison.csv").open() as f:
        assert {r["strategy"]: r["advised"] for r in csv.DictReader(f)} == {"features": "False", "half": "True"}
