"""Predicting and serving from an exported file without PyTorch: the same classes as the run it came from,
its metadata checked before it is believed, and torch, timm and Lightning never imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import headstart
from headstart.cli.main import app
from headstart.data.dataset import demo_root
from headstart.engines import runtimes
from headstart.inference.exported import ExportedPredictor
from headstart.inference.serve import create_app

HEAVY = ("torch", "timm", "lightning", "torchvision", "torchmetrics", "matplotlib")


@pytest.fixture
def exported(demo_exports) -> dict[str, Path]:
    return demo_exports


def _images(n: int) -> list[Path]:
    return sorted((demo_root() / "evaluation").iterdir())[:n]


def _probs(predictor, images, tta=False) -> np.ndarray:
    results = predictor.predict(images, top_k=len(predictor.classes), tta=tta)
    return np.array([[dict(r.top)[c] for c in predictor.classes] for r in results])


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_an_fp32_file_predicts_what_the_run_predicts(demo_run, exported, kind):
    run, exported_file = headstart.load(demo_run.dir), headstart.load(exported[kind])
    assert isinstance(exported_file, ExportedPredictor) and exported_file.classes == run.classes
    assert exported_file.backbone == run.backbone and exported_file.preprocessing == run.preprocessing
    images = _images(40)
    for tta in (False, True):
        assert np.abs(_probs(exported_file, images, tta) - _probs(run, images, tta)).max() < 1e-4


def test_an_int8_file_agrees_with_the_run_on_most_images(demo_run, exported):
    images = _images(150)
    run, int8 = _probs(headstart.load(demo_run.dir), images), _probs(headstart.load(exported["int8"]), images)
    agreement = (run.argmax(1) == int8.argmax(1)).mean()
    assert agreement >= 0.9, agreement
    assert np.abs(int8 - run).max() > 1e-3  # rounded: it is not the fp32 network under another name


@pytest.mark.parametrize("kind", ["onnx", "int8", "openvino"])
def _without_torch(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a process where torch, timm and Lightning cannot be imported (as on a lean install)."""
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}:\n    sys.modules[name] = None  # import name: ModuleNotFoundError\n"
        "from headstart.cli.main import app\n"
        f"app({list(args)!r}, prog_name='headstart')\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("kind", ["onnx", "int8", "openvino"])
def test_predict_and_serve_from_an_exported_file_without_torch(demo_run, exported, kind):
    images = [str(p) for p in _images(3)]
    done = _without_torch("predict", str(exported[kind]), *images, "--format", "json")
    assert done.returncode == 0, done.stderr
    labels = [p["label"] for p in json.loads(done.stdout)["predictions"]]
    expected = [r.label for r in headstart.load(demo_run.dir).predict(images)]
    assert len(labels) == 3 and (labels == expected if kind != "int8" else sum(map(str.__eq__, labels, expected)) >= 2)
    # serve: the app is built and answers, still without torch
    code = (
        f"import sys\nfor name in {HEAVY!r}:\n    sys.modules[name] = None\n"
        "from fastapi.testclient import TestClient\n"
        "from headstart.inference.loading import load\nfrom headstart.inference.serve import create_app\n"
        f"client = TestClient(create_app(load({str(exported[kind])!r})))\n"
        f"print(client.post('/predict', files={{'file': open({images[0]!r}, 'rb')}}).json()['predictions'][0]['label'])"
    )
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert served.returncode == 0 and served.stdout.strip() in expected, served.stderr


def test_a_run_folder_without_torch_is_exit_2_saying_what_to_install(demo_run):
    done = _without_torch("predict", str(demo_run.dir), str(_images(1)[0]))
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "needs torch, which is not installed" in said and "pip install headstart" in said


def test_serving_an_onnx_file_answers_what_serving_the_run_answers(demo_run, exported):
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in _images(4)]
    answers = []
    for source in (demo_run.dir, exported["onnx"]):
        client = TestClient(create_app(headstart.load(source)))
        health = client.get("/healthz").json()
        answer = client.post("/predict?top_k=3", files=files).json()
        answers.append((health, answer))
    (health_run, run), (health_file, onnx) = answers
    # the same model; only the run's can draw where it looked
    assert (health_run.pop("explain"), health_file.pop("explain")) == (True, False)
    assert health_file == health_run
    assert [[t["class"] for t in p["top"]] for p in onnx["predictions"]] == [
        [t["class"] for t in p["top"]] for p in run["predictions"]
    ]
    assert [p["probability"] for p in onnx["predictions"]] == pytest.approx(
        [p["probability"] for p in run["predictions"]], abs=1e-4
    )
    assert [sorted(p) for p in onnx["predictions"]] == [sorted(p) for p in run["predictions"]]
    assert onnx["tta"] == run["tta"] is False


def _invoke(*args: str):
    result = CliRunner().invoke(app, ["predict", *map(str, args)])
    return result.exit_code, " ".join(result.output.split())


def test_metadata_is_checked_before_it_is_believed(exported, tmp_path: Path):
    import onnx

    image = _images(1)[0]
    model = onnx.load(str(exported["onnx"]))
    meta = json.loads(model.metadata_props[0].value)
    for name, change, message in [
        ("fewer-classes", {"classes": meta["classes"][:-1]}, "gave outputs of shape (1, 10)"),
        ("no-classes", {"classes": "T-shirt"}, "has no list of class names"),
        ("twice", {"classes": [meta["classes"][0]] * 10}, "names a class twice"),
        ("bad-size", {"preprocessing": {**meta["preprocessing"], "input_size": -3}}, "unusable preprocessing"),
        ("other-size", {"preprocessing": {**meta["preprocessing"], "input_size": 48}}, "does not run on the 48x48"),
        ("unknown-key", {"preprocessing": {**meta["preprocessing"], "exec": "rm -rf /"}}, "unusable preprocessing"),
    ]:
        model.metadata_props[0].value = json.dumps({**meta, **change})
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        code, output = _invoke(path, image)
        assert code == 2 and message in output, (name, output)
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    code, output = _invoke(tmp_path / "bare.onnx", image)
    assert code == 2 and "carries no headstart metadata" in output
    (tmp_path / "bare.onnx.json").write_text(json.dumps(meta))  # a sidecar names what the file does not
    assert _invoke(tmp_path / "bare.onnx", image)[0] == 0
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    code, output = _invoke(tmp_path / "broken.onnx", image)
    assert code == 2 and "cannot be read" in output, output


def test_options_for_runs_and_missing_runtimes_are_refused_with_exit_2(exported, monkeypatch, tmp_path: Path):
    image = _images(1)[0]
    code, output = _invoke(exported["onnx"], image, "--device", "cuda")
    assert code == 2 and "--device cuda" in output and "for run folders" in output
    code, output = _invoke(exported["onnx"], image, "--engine", "openvino")
    assert code == 2 and "--engine openvino" in output
    (tmp_path / "model.pt2").write_bytes(b"")
    code, output = _invoke(tmp_path / "model.pt2", image)
    assert code == 2 and "runs in PyTorch (torch.export.load)" in output
    code, output = _invoke(tmp_path / "missing.onnx", image)
    assert code == 2 and "does not exist" in output
    monkeypatch.setitem(runtimes.MODULES, "openvino", "openvino_is_not_installed")
    code, output = _invoke(exported["openvino"], image)
    assert code == 2 and "pip install 'headstart[openvino]'" in output
