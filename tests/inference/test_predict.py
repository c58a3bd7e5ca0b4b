"""Using a trained model: predict from Python and the CLI, exactly as evaluation sees the images."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import headstart
from headstart.cli.main import app
from headstart.data.dataset import demo_root
from headstart.evaluation.evaluate import evaluate
from headstart.inference.predict import load
from helpers.datasets import photo


def test_predict_agrees_with_evaluate(demo_run, tmp_path: Path):
    ev = evaluate(shutil.copytree(demo_run.dir, tmp_path / "run"))  # the shared run stays as it was
    results = headstart.load(demo_run.dir).predict(ev.paths, top_k=10)
    assert [r.source for r in results] == ev.paths
    got = np.array([[dict(r.top)[c] for c in ev.classes] for r in results])
    assert np.abs(got - ev.probs).max() < 1e-5  # batches of 32 against 64: float rounding only
    top2 = np.sort(ev.probs, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # the label of a near-tie may fall either way
    assert clear.sum() > 290
    assert [r.label for r, c in zip(results, clear) if c] == [ev.classes[i] for i, c in zip(ev.predictions, clear) if c]
    # top-k: most probable first, k of them
    assert all(len(r.top) == 10 and r.top[0][1] >= r.top[1][1] >= r.top[2][1] for r in results)


def _same(a, b) -> None:
    assert [c for c, _ in a.top] == [c for c, _ in b.top]
    assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-5)


def test_predict_walks_folders_and_reports_unreadable_files(demo_run, tmp_path: Path):
    evaluation = sorted((demo_root() / "evaluation").iterdir())[:3]
    (tmp_path / "photos" / "nested" / "deeper").mkdir(parents=True)
    for i, f in enumerate(evaluation):
        target = tmp_path / "photos" / ("nested/deeper" if i else "") / f.name
        target.write_bytes(f.read_bytes())
    (tmp_path / "photos" / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 5)
    (tmp_path / "photos" / "nested" / "notes.txt").write_text("not an image, not listed\n")
    predictor = load(demo_run.dir)
    cat = photo(0, (100, 80))
    results = predictor.predict([tmp_path / "photos", cat, np.asarray(cat), tmp_path / "missing.png"], top_k=2)
    sources = [r.source for r in results]
    assert sources[:4] == sorted(str(p) for p in (tmp_path / "photos").rglob("*.*") if p.suffix != ".txt")
    assert sources[4:] == ["<image 1>", "<array 2>", str(tmp_path / "missing.png")]
    errors = {Path(r.source).name: r.error for r in results if r.error}
    assert set(errors) == {"broken.jpg", "missing.png"}
    assert errors["broken.jpg"].startswith("cannot decode") and errors["missing.png"] == "no such file or folder"
    ok = [r for r in results if not r.error]
    assert len(ok) == 5 and all(len(r.top) == 2 and r.label in predictor.classes for r in ok)
    # The same picture as PIL image and as array gives the same answer; a one-channel array too
    # (probabilities to float rounding: the two may sit in batches of different sizes).
    _same(results[4], results[5])
    grey = np.asarray(cat.convert("L"))
    _same(predictor.predict(grey[..., None])[0], predictor.predict(grey)[0])
    red = np.array([200, 30, 30], np.uint8)
    one_pixel, block = predictor.predict([np.tile(red, (1, 1, 1)), np.tile(red, (8, 8, 1))])
    assert one_pixel.error is None and one_pixel.label == block.label  # (1, 1, 3) is a 1-pixel image
    # The demo files predicted from a folder match predicting them one by one (up to batch rounding).
    for r in ok[:3]:
        alone = predictor.predict(r.source, top_k=2)[0]
        assert alone.label == r.label and abs(alone.probability - r.probability) < 1e-5


def test_predict_cli_formats_and_exit_codes(demo_run, tmp_path: Path):
    runner = CliRunner()
    images = sorted((demo_root() / "evaluation").iterdir())[:2]
    expected = load(demo_run.dir).predict(images, top_k=3)

    res = runner.invoke(app, ["predict", str(demo_run.dir), *map(str, images), "--format", "json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert [p["label"] for p in body["predictions"]] == [r.label for r in expected]
    assert [len(p["top"]) for p in body["predictions"]] == [3, 3]

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    res = runner.invoke(
        app, ["predict", str(demo_run.dir), str(images[0]), str(broken), "--format", "csv", "--top-k", "2"]
    )
    assert res.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r["source"], r["rank"], r["class"]) for r in rows[:2]] == [
        (str(images[0]), "1", expected[0].top[0][0]),
        (str(images[0]), "2", expected[0].top[1][0]),
    ]
    assert rows[2]["source"] == str(broken) and rows[2]["error"].startswith("cannot decode")

    res = runner.invoke(app, ["predict", str(demo_run.dir), str(images[0]), str(broken)])
    assert res.exit_code == 1 and "not read (below)" in res.stdout
    assert f"error: {broken}: cannot decode" in res.stdout.replace("\n", "")  # in full, on its own line

    res = runner.invoke(app, ["predict", str(demo_run.dir), str(images[0]), "--device", "cpu", "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["predictions"][0]["label"] == expected[0].label
    for args, message in (
        ([str(tmp_path), str(images[0])], "no checkpoints/best.ckpt"),
        ([str(demo_run.dir), str(images[0]), "--device", "tpu"], "Unknown device 'tpu'"),
        ([str(demo_run.dir), str(images[0]), "--format", "xml"], "'xml' is not one of"),
    ):
        res = runner.invoke(app, ["predict", *args])
        assert res.exit_code == 2 and message in res.output


def _views(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo at the model's input size, and one that is its own mirror image (left half + its mirror)."""
    a = np.asarray(photo(1, (size, size)))
    half = a[:, : size // 2]
    symmetric = np.concatenate([half, half[:, ::-1]], 1)
    assert np.array_equal(symmetric, symmetric[:, ::-1])
    return a, symmetric


def test_tta_is_exact_on_a_mirror_image_and_the_mean_of_both_views_otherwise(tiny_run):
    predictor = load(tiny_run.dir)
    a, symmetric = _views(predictor.preprocessing.input_size)
    plain = predictor.probabilities([symmetric, a])
    tta = predictor.probabilities([symmetric, a], tta=True)
    assert np.abs(tta[0] - plain[0]).max() < 1e-6  # its mirror image is itself: nothing changes
    mirrored = predictor.probabilities([a[:, ::-1]])[0]  # the flipped photo, predicted directly
    assert np.abs(tta[1] - (plain[1] + mirrored) / 2).max() < 1e-6
    assert np.abs(tta[1] - plain[1]).max() > 1e-4  # the two views do differ
    # The public API: predict(..., tta=True), from an array or a PIL image, gives the same.
    image = photo(1, (a.shape[1], a.shape[0]))
    for item in (a, image):
        [p] = predictor.predict(item, top_k=3, tta=True)
        assert np.abs(np.array([dict(p.top)[c] for c in predictor.classes]) - tta[1]).max() < 1e-6
    [p] = predictor.predict(a, top_k=3)
    assert np.abs(np.array([dict(p.top)[c] for c in predictor.classes]) - plain[1]).max() < 1e-6


def test_predict_cli_tta(tiny_run, tmp_path: Path):
    images = sorted((Path(tiny_run.config.data) / "evaluation").iterdir())[:3]
    predictor = load(tiny_run.dir)
    expected = {"--tta": predictor.predict(images, tta=True), "": predictor.predict(images)}
    for flag, want in expected.items():
        res = CliRunner().invoke(
            app, ["predict", str(tiny_run.dir), *map(str, images), "--format", "json", *([flag] if flag else [])]
        )
        assert res.exit_code == 0, res.output
        got = [p["top"] for p in json.loads(res.stdout)["predictions"]]
        assert got == [[{"class": c, "probability": pytest.approx(q, abs=1e-6)} for c, q in r.top] for r in want]
    assert expected["--tta"][0].top != expected[""][0].top


@pytest.mark.parametrize("claim", [("preprocessing", "input_size", 60000), ("model", "input_size", -5)])
def test_a_checkpoint_claiming_an_impossible_size_is_refused_before_any_allocation(toy_run, tmp_path: Path, claim):
    import torch

    ckpt = torch.load(toy_run.best_checkpoint, weights_only=True, map_location="cpu")
    section, key, value = claim
    ckpt["headstart"][section][key] = value
    torch.save(ckpt, tmp_path / "hostile.ckpt")
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "hostile.ckpt"), str(demo_root() / "evaluation")])
    assert res.exit_code == 2 and "input_size must be between 1 and 4096" in res.output, res.output
