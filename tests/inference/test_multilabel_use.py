"""Using a multi-label model: its labels (each class at or above its threshold) from the run, from an exported
ONNX file (fp32 and int8, its thresholds in its metadata) and from the server; ``threshold`` for every class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import headstart
from headstart.errors import ConfigError, RunError
from headstart.inference.exported import check_metadata
from headstart.inference.serve import create_app


@pytest.fixture(scope="module")
def evaluation_images(multi_run) -> list[Path]:
    return [s.path for s in headstart.load_dataset(multi_run[1], seed=0).split("evaluation")]


def test_labels_are_the_classes_at_or_above_their_thresholds(multi_run, evaluation_images):
    predictor = headstart.load(multi_run[0].dir)
    assert predictor.multi_label and predictor.thresholds.tolist() == pytest.approx(multi_run[0].metrics["thresholds"])
    for p in predictor.predict(evaluation_images, top_k=3):
        probs = dict(p.top)
        expected = [c for c, t in zip(predictor.classes, predictor.thresholds) if probs[c] >= t]
        assert sorted(c for c, _ in p.labels) == sorted(expected)
        assert [q for _, q in p.labels] == sorted((q for _, q in p.labels), reverse=True)  # most probable first
        assert p.to_dict()["labels"] == [{"class": c, "probability": q} for c, q in p.labels]
    assert all(len(p.labels) == 3 for p in predictor.predict(evaluation_images[:3], threshold=1e-6))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        predictor.predict(evaluation_images[:1], threshold=1.5)
    assert all(0 <= m.max() <= 1 for m in [e.map for e in predictor.explain(evaluation_images[:1])])


def test_an_exported_file_gives_the_runs_labels(multi_run, evaluation_images, tmp_path: Path):
    from headstart.inference.export import check_agreement, export

    run = multi_run[0]
    out = tmp_path / "model.onnx"
    meta = json.loads(export(run.dir, "onnx", out).sidecar.read_text())
    assert meta["task"] == "multi" and meta["thresholds"] == pytest.approx(run.metrics["thresholds"])
    assert "sigmoid" in meta["output"]["meaning"]
    exported, torch_model = headstart.load(out), headstart.load(run.dir)
    assert exported.thresholds.tolist() == pytest.approx(torch_model.thresholds.tolist())
    a, b = exported.predict(evaluation_images), torch_model.predict(evaluation_images)
    for x, y in zip(a, b):
        assert max(abs(dict(x.top)[c] - dict(y.top)[c]) for c in dict(x.top)) < 1e-4
    assert [[c for c, _ in x.labels] for x in a] == [[c for c, _ in y.labels] for y in b]
    # What --int8 and --fp16 are held to: the same labels as PyTorch (every class on its side of its threshold),
    # and the share of images with every label right, both ways.
    checks = check_agreement(torch_model, out, "onnx", "fp32", 0.95)
    assert checks["agrees_on"] == "labels" and checks["agreement"] == 1.0
    assert checks["accuracy"] == checks["pytorch_accuracy"] == pytest.approx(run.metrics["accuracy"], abs=1e-4)


def test_exported_metadata_without_good_thresholds_is_refused(multi_run, tmp_path: Path):
    preprocessing = headstart.load(multi_run[0].dir).preprocessing.to_dict()
    meta = {"classes": ["a", "b"], "preprocessing": preprocessing, "task": "multi"}
    assert check_metadata({**meta, "thresholds": [0.2, 0.7]}, tmp_path / "m.onnx")["thresholds"] == [0.2, 0.7]
    for thresholds in (None, [0.5], [0.5, 1.5], [0.5, "x"]):
        with pytest.raises(RunError, match="threshold in \\[0, 1\\] for each of its 2 classes"):
            check_metadata({**meta, "thresholds": thresholds}, tmp_path / "m.onnx")
    with pytest.raises(RunError, match="unknown task"):
        check_metadata({**meta, "task": "several", "thresholds": [0.5, 0.5]}, tmp_path / "m.onnx")


def test_the_server_answers_labels_and_takes_a_threshold(multi_run, evaluation_images, tiny_run):
    predictor = headstart.load(multi_run[0].dir)
    client = TestClient(create_app(predictor))
    health = client.get("/healthz").json()
    assert health["thresholds"] == pytest.approx(predictor.thresholds.tolist())
    image = evaluation_images[0]
    expected = predictor.predict([image])[0]
    files = {"file": (image.name, image.read_bytes(), "image/jpeg")}
    [answer] = client.post("/predict", files=files).json()["predictions"]
    assert [t["class"] for t in answer["labels"]] == [c for c, _ in expected.labels]
    [everything] = client.post("/predict?threshold=0.000001", files=files).json()["predictions"]
    assert len(everything["labels"]) == 3
    assert client.post("/predict?threshold=2", files=files).status_code == 422
    # --threshold: the server's own, for every class
    strict = TestClient(create_app(predictor, threshold=0.999999))
    assert strict.get("/healthz").json()["thresholds"] == pytest.approx([0.999999] * 3)
    assert strict.post("/predict", files=files).json()["predictions"][0]["labels"] == []
    assert "Labels" in client.get("/").text
    single = TestClient(create_app(headstart.load(tiny_run.dir)))
    response = single.post("/predict?threshold=0.5", files=files)
    assert response.status_code == 400 and "multi-label" in response.json()["error"]
    assert "thresholds" not in single.get("/healthz").json()
    assert np.isfinite(answer["probability"])
