"""Evaluation numbers: they agree with each other, with scikit-learn, and with predictions made here."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.data.dataset import load_dataset
from headstart.data.images import load_image
from headstart.evaluation.evaluate import compute, evaluate
from headstart.inference.predict import load
from headstart.runs.checkpoints import load_checkpoint


def test_compute_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(7)]
    targets = rng.integers(0, 7, 200)
    probs = rng.dirichlet(np.ones(7), 200)
    probs[np.arange(120), targets[:120]] += 2  # mostly right
    probs /= probs.sum(1, keepdims=True)
    ev = compute(targets, probs, classes)
    preds = probs.argmax(1)
    assert ev.correct == int((preds == targets).sum()) and ev.total == 200
    assert ev.accuracy == ev.correct / 200
    assert np.array_equal(ev.confusion, confusion_matrix(targets, preds, labels=range(7)))
    p, r, f, support = precision_recall_fscore_support(targets, preds, labels=range(7), zero_division=0)
    for i, row in enumerate(ev.per_class):
        assert row["precision"] == pytest.approx(p[i], abs=1e-6) and row["recall"] == pytest.approx(r[i], abs=1e-6)
        assert row["f1"] == pytest.approx(f[i], abs=1e-6) and row["support"] == support[i]
    top3 = np.mean([t in np.argsort(-pr)[:3] for t, pr in zip(targets, probs)])
    assert ev.top_k[3] == pytest.approx(top3, abs=1e-6)
    assert ev.loss == pytest.approx(-np.mean(np.log(probs[np.arange(200), targets])), rel=1e-5)
    off = ev.confusion - np.diag(np.diag(ev.confusion))
    assert ev.most_confused[0]["count"] == off.max()
    assert compute(targets % 3, probs[:, :3], classes[:3]).top_k == {}  # top-k only with more than 5 classes


def test_evaluate_matches_predictions_made_independently(demo_run, tmp_path: Path):
    trained = demo_run.metrics  # what the end of training recorded, from the cached features
    run_dir = shutil.copytree(demo_run.dir, tmp_path / "run")  # the shared run stays as training left it
    ev = evaluate(run_dir)
    # Independently: decode each evaluation image, resize it, and ask the best checkpoint, in one batch.
    model, meta = load_checkpoint(demo_run.best_checkpoint)
    ds = load_dataset("demo")
    samples = [s for s in ds.samples if s.split == "evaluation"]
    x = torch.stack([model.preprocessing.to_tensor(load_image(s.path)) for s in samples])
    with torch.no_grad():
        probs = model(x).softmax(1).numpy()
    targets = np.array([s.label for s in samples])
    # Other batch sizes take other kernels: probabilities equal to float rounding, not bit for bit.
    assert np.abs(ev.probs - probs).max() < 1e-5
    assert ev.confusion.trace() == ev.correct and ev.confusion.sum() == ev.total == 300
    assert abs(ev.correct - int((probs.argmax(1) == targets).sum())) <= 1  # a near-tie may fall either way
    # Training's own evaluation (features computed once, then the head) agrees with the images' path.
    assert (trained["total"], meta["classes"][0]) == (300, "T-shirt/top")
    assert abs(trained["correct"] - ev.correct) <= 1
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert (saved["accuracy"], saved["correct"], saved["confusion_matrix"]) == (
        ev.accuracy,
        ev.correct,
        ev.confusion.tolist(),
    )
    assert saved["best_epoch"] == trained["best_epoch"]  # what training recorded beside the metrics is kept
    with (run_dir / "confusion_matrix.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == meta["classes"]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == ev.confusion.tolist()


EVALUATION_FILES = {"metrics{}.json", "confusion_matrix{}.csv", "confusion_matrix{}.png"}


def _written(run_dir: Path, since: float) -> set[str]:
    return {p.name for p in run_dir.iterdir() if p.is_file() and p.stat().st_mtime_ns >= since}


def test_python_and_cli_evaluate_write_the_same_files(tiny_run, tmp_path: Path):
    run_dir = shutil.copytree(tiny_run.dir, tmp_path / "run")  # the shared run stays as training left it
    before = time.time_ns()
    ev = evaluate(run_dir, split="training")
    python = _written(run_dir, before)
    assert python == {f.format("-training") for f in EVALUATION_FILES}
    before = time.time_ns()
    result = CliRunner().invoke(app, ["evaluate", str(run_dir), "--split", "training"])
    assert result.exit_code == 0, result.output
    assert _written(run_dir, before) == python
    assert json.loads((run_dir / "metrics-training.json").read_text())["correct"] == ev.correct
    # The end of training wrote the same for the evaluation split, and the report beside them.
    assert {f.format("") for f in EVALUATION_FILES} <= {p.name for p in run_dir.iterdir()}


def test_evaluate_cli(demo_run, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(demo_run.dir), "--split", "validation"])
    assert result.exit_code == 0, result.output
    saved = json.loads((demo_run.dir / "metrics-validation.json").read_text())
    assert f"Number of correctly identified images: {saved['correct']} of 200" in result.output
    assert "Top-3 accuracy" in result.output and "Per class" in result.output
    assert (demo_run.dir / "confusion_matrix-validation.png").stat().st_size > 10_000
    assert runner.invoke(app, ["evaluate", str(tmp_path)]).exit_code == 2
    bad = runner.invoke(app, ["evaluate", str(demo_run.dir), "--split", "test"])
    assert bad.exit_code == 2 and "Invalid value for '--split'" in bad.output and "'test' is not one of" in bad.output


def test_evaluate_with_tta_records_both_figures(tiny_run, tmp_path: Path):
    run_dir = shutil.copytree(tiny_run.dir, tmp_path / "run")  # the shared run stays as training left it
    assert "tta_accuracy" not in tiny_run.metrics  # off unless asked for
    ev = evaluate(run_dir, tta=True)
    # Independently: each evaluation image, and its mirror image, predicted on its own.
    predictor = load(run_dir)
    images = [predictor.prepare(load_image(p)) for p in ev.paths]
    plain = predictor.probabilities(images)
    mirrored = predictor.probabilities([a[:, ::-1] for a in images])
    assert np.abs(ev.probs - plain).max() < 1e-5  # the plain figures stay those of one view
    assert np.abs(ev.tta_probs - (plain + mirrored) / 2).max() < 1e-5
    assert ev.tta_correct == int((ev.tta_probs.argmax(1) == ev.targets).sum()) and ev.tta_accuracy == ev.tta_correct / 9
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert (saved["accuracy"], saved["correct"]) == (ev.accuracy, ev.correct)
    assert (saved["tta_accuracy"], saved["tta_correct"]) == (ev.tta_accuracy, ev.tta_correct)

    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(run_dir), "--split", "training", "--tta"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "metrics-training.json").read_text())
    assert (
        f"With test-time augmentation (mirror image averaged in): {saved['tta_accuracy']:.4f} "
        f"({saved['tta_correct']} of 24)" in result.output
    )
    # Without --tta, no figure is left from an earlier evaluation with it.
    assert runner.invoke(app, ["evaluate", str(run_dir)]).exit_code == 0
    assert "tta_accuracy" not in json.loads((run_dir / "metrics.json").read_text())
