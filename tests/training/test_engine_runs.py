"""Runs with an engine: features computed by OpenVINO train as PyTorch's do, a later run reads them from
disk, half with augmentation computes views by default, and using a model runs in the engine asked for."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.evaluation.evaluate import evaluate
from headstart.inference.predict import load
from headstart.models.timm_backbones import TimmBody
from headstart.runs.folder import Run
from headstart.training.fit import fit
from helpers.datasets import TINY, TINY_IMAGES, TINY_OPTIONS


def test_features_computed_by_openvino_train_as_pytorchs_and_a_later_run_reads_them(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    seen = []
    forward = TimmBody.forward

    def counting(self, x):
        if not torch.compiler.is_exporting():  # an export traces the body: not an image through it
            seen.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(TimmBody, "forward", counting)
    toy = dict(backbone="test_efficientnet", weights="none")  # timm's smallest network: a quick export
    opts = dict(strategy="features", epochs=3, runs_dir=tmp_path / "runs", **toy, **TINY_OPTIONS)
    torch_run = fit(tiny, engine="torch", name="torch", **opts)
    assert sum(seen) == TINY_IMAGES and torch_run.metrics["frozen_pass"] == {"engine": "torch", "precision": "fp32"}
    ov = fit(tiny, engine="openvino", name="openvino", **opts)
    used = ov.metrics["frozen_pass"]
    assert used["engine"] == "openvino" and used["parity_rel_error"] <= 1e-4
    assert abs(ov.metrics["accuracy"] - torch_run.metrics["accuracy"]) <= 1 / 9  # one image of nine at most
    for a, b in zip(ov.history, torch_run.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3) and a["val_loss"] == pytest.approx(
            b["val_loss"], rel=1e-3
        )
    before = sum(seen)
    again = fit(tiny, engine="openvino", name="again", lr=0.01, **opts)  # another head: the same features
    assert sum(seen) == before  # not one image through the backbone: read from disk
    assert again.metrics["frozen_pass"] == {**used, "kept": True}


def test_half_with_augmentation_computes_views_by_default_and_says_nothing_of_it(tiny, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        run = fit(
            tiny,
            strategy="half",
            epochs=4,
            runs_dir=tmp_path,
            name="h",
            backbone="test_efficientnet",
            weights="none",
            **TINY_OPTIONS,
        )
    assert run.config.aug_views == "auto" and run.metrics["aug_views"] == 4  # auto: up to 8, at most the epochs
    assert not [r for r in caplog.records if "every epoch" in r.getMessage()]
    plain = fit(tiny, strategy="features", epochs=1, runs_dir=tmp_path, name="f", **TINY_OPTIONS)
    assert "aug_views" not in plain.metrics and not plain.config.augment  # features stays plain: computed once


def test_predict_and_evaluate_run_in_the_engine_asked_for(toy_run, tiny, tmp_path: Path):
    images = sorted((tiny / "evaluation").iterdir())
    torch_probs = load(toy_run.dir, engine="torch").probabilities([np.zeros((32, 32, 3), np.uint8)] * 2)
    predictor = load(toy_run.dir, engine="onnxruntime")
    assert np.allclose(predictor.probabilities([np.zeros((32, 32, 3), np.uint8)] * 2), torch_probs, atol=1e-5)
    assert predictor.engine.used["engine"] == "onnxruntime"
    labels = [p.label for p in load(toy_run.dir, engine="torch").predict(images)]
    assert [p.label for p in predictor.predict(images)] == labels
    run = Run.load(shutil.copytree(toy_run.dir, tmp_path / "run"))  # evaluate writes into the run
    ev = evaluate(run, engine="onnxruntime")
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["engine"]["engine"] == "onnxruntime" and ev.total == sum(TINY["evaluation"])
