"""Using a trained model: predict (Python and CLI) and export (ONNX, TorchScript) with parity checks."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo
from PIL import Image
from typer.testing import CliRunner

import headstart
from headstart import export as hs_export
from headstart.cli import app
from headstart.evaluation import evaluate_run
from headstart.predict import load


def test_predict_agrees_with_evaluate(demo_run):
    ev, _ = evaluate_run(demo_run.dir)
    results = headstart.load(demo_run.dir).predict(ev.paths, top_k=10)
    assert [r.source for r in results] == ev.paths
    assert [r.label for r in results] == [ev.classes[i] for i in ev.predictions]
    got = np.array([[dict(r.top)[c] for c in ev.classes] for r in results])
    assert np.abs(got - ev.probs).max() < 1e-5
    # top-k: most probable first, k of them
    assert all(len(r.top) == 10 and r.top[0][1] >= r.top[1][1] >= r.top[2][1] for r in results)


def test_predict_walks_folders_and_reports_unreadable_files(demo_run, tmp_path: Path):
    evaluation = sorted((headstart.data.demo_root() / "evaluation").iterdir())[:3]
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
    # The same picture as PIL image and as array gives the same answer; a one-channel array too.
    assert results[4].top == results[5].top
    grey = np.asarray(cat.convert("L"))
    assert predictor.predict(grey[..., None])[0].top == predictor.predict(grey)[0].top
    red = np.array([200, 30, 30], np.uint8)
    one_pixel, block = predictor.predict([np.tile(red, (1, 1, 1)), np.tile(red, (8, 8, 1))])
    assert one_pixel.error is None and one_pixel.label == block.label  # (1, 1, 3) is a 1-pixel image
    # The demo files predicted from a folder match predicting them one by one (up to batch rounding).
    for r in ok[:3]:
        alone = predictor.predict(r.source, top_k=2)[0]
        assert alone.label == r.label and abs(alone.probability - r.probability) < 1e-5


def test_predict_cli_formats_and_exit_codes(demo_run, tmp_path: Path):
    runner = CliRunner()
    images = sorted((headstart.data.demo_root() / "evaluation").iterdir())[:2]
    expected = load(demo_run.dir).predict(images, top_k=3)

    res = runner.invoke(app, ["predict", str(demo_run.dir), *map(str, images), "--format", "json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert [p["label"] for p in body["predictions"]] == [r.label for r in expected]
    assert [len(p["top"]) for p in body["predictions"]] == [3, 3]

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    res = runner.invoke(app, ["predict", str(demo_run.dir), str(images[0]), str(broken), "--format", "csv", "--top-k", "2"])
    assert res.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r["source"], r["rank"], r["class"]) for r in rows[:2]] == [
        (str(images[0]), "1", expected[0].top[0][0]), (str(images[0]), "2", expected[0].top[1][0])]
    assert rows[2]["source"] == str(broken) and rows[2]["error"].startswith("cannot decode")

    res = runner.invoke(app, ["predict", str(demo_run.dir), str(images[0]), str(broken)])
    assert res.exit_code == 1 and "not read (below)" in res.stdout
    assert f"error: {broken}: cannot decode" in res.stdout.replace("\n", "")  # in full, on its own line

    for args, message in (([str(tmp_path), str(images[0])], "no checkpoints/best.ckpt"),
                          ([str(demo_run.dir), str(images[0]), "--format", "xml"], "Unknown --format 'xml'")):
        res = runner.invoke(app, ["predict", *args])
        assert res.exit_code == 2 and message in res.output


# --- export ---------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch_and_carries_its_metadata(demo_run, tmp_path: Path):
    import onnxruntime as ort

    result = hs_export.export(demo_run.dir, "onnx", tmp_path / "food.onnx")
    assert result.path == tmp_path / "food.onnx" and result.max_difference < 1e-4
    meta = hs_export.read_metadata(result.path)
    predictor = load(demo_run.dir)
    assert meta["classes"] == predictor.classes and meta["preprocessing"]["input_size"] == 64
    assert json.loads(result.sidecar.read_text())["classes"] == predictor.classes
    # A user with only onnxruntime and the metadata gets the same answer as headstart.
    image = sorted((headstart.data.demo_root() / "evaluation").iterdir())[0]
    size = meta["preprocessing"]["input_size"]
    x = np.asarray(Image.open(image).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"image": x.transpose(2, 0, 1)[None]})[0][0]
    assert meta["classes"][int(probs.argmax())] == predictor.predict(image)[0].label
    assert abs(probs.sum() - 1) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["food.onnx", "food.onnx.json"]  # no leftovers


def test_torchscript_export_from_the_cli(demo_run, tmp_path: Path):
    path = tmp_path / "model.pt"
    res = CliRunner().invoke(app, ["export", str(demo_run.dir), "--format", "torchscript", "--out", str(path)])
    assert res.exit_code == 0, res.output
    assert "Parity with PyTorch" in res.stdout and str(path) in res.stdout
    files = {"headstart.json": ""}
    module = torch.jit.load(str(path), _extra_files=files)
    meta = json.loads(files["headstart.json"])
    assert meta["classes"] == load(demo_run.dir).classes
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(module(x), load(demo_run.dir).model(x).softmax(1), atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_broken_export_is_caught_and_nothing_is_kept(demo_run, tmp_path: Path, monkeypatch, fmt):
    def broken(predictor):
        graph = copy.deepcopy(hs_export.WithSoftmax(predictor.model)).eval()
        with torch.no_grad():
            for p in graph.model.head.parameters():  # a 5 % error in the head: a wrong model
                p.mul_(1.05)
        return graph

    monkeypatch.setattr(hs_export, "_graph", broken)
    out = tmp_path / f"model{hs_export.FORMATS[fmt]}"
    with pytest.raises(hs_export.ExportError, match="does not match PyTorch: probabilities differ by up to"):
        hs_export.export(demo_run.dir, fmt, out)
    assert list(tmp_path.iterdir()) == []
    res = CliRunner().invoke(app, ["export", str(demo_run.dir), "--format", fmt, "--out", str(out)])
    assert res.exit_code == 1 and "does not match PyTorch" in res.output and not out.exists()


def test_export_rejects_bad_arguments(demo_run, tmp_path: Path):
    res = CliRunner().invoke(app, ["export", str(demo_run.dir), "--format", "tflite"])
    assert res.exit_code == 2 and "Unknown export format 'tflite'" in res.output
    for out in (tmp_path, tmp_path / "model.onnx"):  # a folder; the wrong suffix for torchscript
        res = CliRunner().invoke(app, ["export", str(demo_run.dir), "--format", "torchscript", "--out", str(out)])
        assert res.exit_code == 2 and "must be a .pt file" in res.output
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    res = CliRunner().invoke(app, ["export", str(tmp_path / "bad.safetensors")])
    assert res.exit_code == 2 and "is not a readable headstart model" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output
