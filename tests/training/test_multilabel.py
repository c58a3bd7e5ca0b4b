"""Multi-label training end to end from the command line: a sigmoid a class and binary cross-entropy, the best
epoch by validation mAP, thresholds chosen on validation and kept in the checkpoint, the evaluation's metrics as
scikit-learn computes them from the predictions; compare and advise on multi-label data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.runs.checkpoints import read_checkpoint

runner = CliRunner()


def _history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_train_evaluate_and_predict_multi_label_from_the_command_line(multi_run, tmp_path: Path):
    from sklearn.metrics import average_precision_score

    _, manifest = multi_run
    runs = tmp_path / "runs"
    args = ["train", str(manifest), "--strategy", "features", "--epochs", "6", "--input-size", "64"]
    result = runner.invoke(app, [*args, "--batch-size", "16", "--runs-dir", str(runs), "--name", "m"])
    assert result.exit_code == 0, result.output
    assert "mAP on evaluation data" in result.output and "Accuracy on evaluation data" not in result.output
    run = runs / "m"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["task"], config["monitor"], config["head_search"]) == ("multi", "val_map", "off")
    history = _history(run)
    assert list(history[0])[:7] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1", "val_map"]
    metrics = json.loads((run / "metrics.json").read_text())
    val_maps = [float(r["val_map"]) for r in history]
    assert metrics["best_epoch"] == 1 + int(np.argmax(val_maps))  # the first epoch with the best validation mAP
    assert metrics["map"] >= 0.85, metrics["map"]  # a coloured quarter a label: learnt from frozen features
    # The thresholds are kept in the best checkpoint, chosen on validation at that epoch.
    meta = read_checkpoint(run / "checkpoints" / "best.ckpt")["headstart"]
    assert meta["task"] == "multi" and meta["thresholds"] == pytest.approx(metrics["thresholds"], abs=1e-6)
    assert all(0 < t < 1 for t in meta["thresholds"])
    # The evaluation's mAP and labels are scikit-learn's on what predict gives for the evaluation images.
    import headstart

    data = headstart.load_dataset(manifest, seed=0)
    evaluation = data.split("evaluation")
    predictor = headstart.load(run)
    predictions = predictor.predict([s.path for s in evaluation], top_k=3)
    classes = predictor.classes
    probs = np.array([[dict(p.top)[c] for c in classes] for p in predictions])
    truth = np.array([[c in s.label for c in range(len(classes))] for s in evaluation])
    assert metrics["map"] == pytest.approx(average_precision_score(truth, probs, average="macro"), abs=1e-4)
    given = np.array([[c in {name for name, _ in p.labels} for c in classes] for p in predictions])
    assert (given == (probs >= np.array(meta["thresholds"]))).all()
    assert metrics["correct"] == int((given == truth).all(1).sum())
    # evaluate: the same figures; predict: labels, and --threshold for every class
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["map"] == pytest.approx(metrics["map"], abs=1e-5)
    assert "True vs predicted labels" in result.output and "threshold" in result.output
    one = str(evaluation[0].path)
    for threshold, count in (("0.001", 3), ("0.999", 0)):
        result = runner.invoke(app, ["predict", str(run), one, "--threshold", threshold, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)["predictions"][0]["labels"]) == count
    report = (run / "report.html").read_text()
    assert "evaluation mAP" in report and "Precision and recall" in report and "True vs predicted labels" in report
    assert (run / "pr_curves.png").is_file() and (run / "misclassified.png").is_file()


def test_threshold_is_refused_for_a_single_label_model(tiny_run, tiny):
    image = next(p for p in Path(tiny, "evaluation").iterdir())
    result = runner.invoke(app, ["predict", str(tiny_run.dir), str(image), "--threshold", "0.5"])
    assert result.exit_code == 2 and "multi-label" in result.output


def test_class_weights_auto_weighs_each_class_positives_by_its_negatives(multi_run):
    run, manifest = multi_run
    import headstart

    ds = headstart.load_dataset(manifest, seed=0)
    y = np.array([[c in s.label for c in range(3)] for s in ds.split("training")])
    expected = (len(y) - y.sum(0)) / y.sum(0)
    assert list(run.metrics["class_weights"].values()) == pytest.approx(expected.tolist(), rel=1e-4)


def test_monitor_val_map_is_refused_on_single_label_data_and_balanced_on_multi_label(tiny, multi_run, tmp_path):
    from headstart.errors import ConfigError
    from headstart.training.fit import fit

    with pytest.raises(ConfigError, match="val_map is the mean average precision of multi-label data"):
        fit(tiny, monitor="val_map", runs_dir=tmp_path, epochs=1, input_size=32)
    with pytest.raises(ConfigError, match="sampler balanced"):
        fit(multi_run[1], sampler="balanced", runs_dir=tmp_path, epochs=1, input_size=32)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_multi_label_data_monitors_val_map_unless_another_figure_was_asked_for():
    from headstart.config import TrainConfig
    from headstart.training.fit import for_task

    cfg = TrainConfig()
    assert for_task(cfg, "multi", {}).monitor == "val_map"
    assert for_task(cfg, "multi", {"monitor": "val_loss"}).monitor == "val_loss"  # asked: kept
    assert for_task(cfg, "multi", None).monitor == "val_loss"  # a whole config (a run's config.yaml): kept
    assert for_task(cfg, "single", {}).monitor == "val_loss" and for_task(cfg, "single", {}).task == "single"


def test_compare_and_advise_on_multi_label_data(multi_run, tmp_path: Path):
    _, manifest = multi_run
    args = ["compare", str(manifest), "--strategies", "features,features+tta", "--epochs", "1", "--input-size", "32"]
    result = runner.invoke(app, [*args, "--no-advise", "--runs-dir", str(tmp_path), "--name", "c"])
    assert result.exit_code == 0, result.output
    assert "eval mAP" in result.output and "reached the best evaluation mAP" in result.output
    with (tmp_path / "c" / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["features", "features+tta"] and all(
        0 <= float(r["map"]) <= 1 for r in rows
    )
    assert "evaluation mAP" in (tmp_path / "c" / "report.html").read_text()
    result = runner.invoke(app, ["advise", str(manifest), "--sample", "5", "--input-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)["measurements"]
    assert 0 <= measured["final_knn"] <= 1 and measured["sample"] >= 5 and measured["task"] == "multi"


def test_knn_probe_of_multi_label_data_is_the_map_of_neighbour_votes():
    from sklearn.metrics import average_precision_score

    from headstart.advice.strategy import knn_accuracy

    torch.manual_seed(0)
    labels = (torch.rand(40, 3) < 0.5).float()
    labels[0] = 1
    features = labels + 0.1 * torch.randn(40, 3)  # features that carry the labels: neighbours share them
    probe = knn_accuracy(features, labels, k=5)
    assert probe > 0.8
    x = torch.nn.functional.normalize(features, dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    votes = labels[sim.topk(5, dim=1).indices].mean(1)
    assert probe == pytest.approx(average_precision_score(labels.numpy(), votes.numpy(), average="macro"))


def test_an_interrupted_multi_label_run_resumes_as_an_uninterrupted_one(multi_run, tmp_path: Path):
    from headstart.training.fit import fit
    from helpers.training import StopAfter

    opts = dict(epochs=3, deterministic=True, runs_dir=tmp_path, early_stopping=0, input_size=32, batch_size=16)
    whole = fit(multi_run[1], name="whole", **opts)
    stopped = fit(multi_run[1], name="stopped", callbacks=[StopAfter(2)], **opts)
    assert stopped.interrupted and not stopped.metrics
    resumed = fit(resume=stopped.dir)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in whole.history
    ]
    for key in ("map", "thresholds", "best_epoch", "correct", "micro_f1", "per_class"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert resumed.config.monitor == "val_map" and resumed.config.task == "multi"
