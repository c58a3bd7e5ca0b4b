"""Export (ONNX, TorchScript): the file computes what PyTorch computes, carries what it needs, and a
wrong one is never kept."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.data.dataset import demo_root
from headstart.errors import ExportError
from headstart.inference import export as hs_export
from headstart.inference.predict import load


def test_onnx_export_matches_pytorch_and_carries_its_metadata(tiny_run, tmp_path: Path):
    import onnxruntime as ort

    result = hs_export.export(tiny_run.dir, "onnx", tmp_path / "food.onnx")
    assert result.path == tmp_path / "food.onnx" and result.max_difference < 1e-4
    meta = hs_export.read_metadata(result.path)
    predictor = load(tiny_run.dir)
    assert meta["classes"] == predictor.classes and meta["preprocessing"]["input_size"] == 32
    assert json.loads(result.sidecar.read_text())["classes"] == predictor.classes
    # A user with only onnxruntime and the metadata gets the same answer as headstart.
    image = sorted((demo_root() / "evaluation").iterdir())[0]
    size = meta["preprocessing"]["input_size"]
    x = np.asarray(Image.open(image).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"image": x.transpose(2, 0, 1)[None]})[0][0]
    ours = dict(predictor.predict(image, top_k=len(predictor.classes))[0].top)
    assert np.abs(probs - np.array([ours[c] for c in meta["classes"]])).max() < 1e-4
    assert abs(probs.sum() - 1) < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["food.onnx", "food.onnx.json"]  # no leftovers


def test_torchscript_export_from_the_cli(tiny_run, tmp_path: Path):
    path = tmp_path / "model.pt"
    res = CliRunner().invoke(app, ["export", str(tiny_run.dir), "--format", "torchscript", "--out", str(path)])
    assert res.exit_code == 0, res.output
    assert "Parity with PyTorch" in res.stdout and str(path) in res.stdout
    files = {"headstart.json": ""}
    module = torch.jit.load(str(path), _extra_files=files)
    meta = json.loads(files["headstart.json"])
    assert meta["classes"] == load(tiny_run.dir).classes
    x = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(module(x), load(tiny_run.dir).model(x).softmax(1), atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_broken_export_is_caught_and_nothing_is_kept(toy_run, tmp_path: Path, monkeypatch, fmt):
    def broken(predictor):
        graph = copy.deepcopy(hs_export.WithSoftmax(predictor.model)).eval()
        with torch.no_grad():
            for p in graph.model.head.parameters():  # a 5 % error in the head: a wrong model
                p.mul_(1.05)
        return graph

    monkeypatch.setattr(hs_export, "_graph", broken)
    out = tmp_path / f"model{hs_export.FORMATS[fmt]}"
    with pytest.raises(ExportError, match="does not match PyTorch: probabilities differ by up to"):
        hs_export.export(toy_run.dir, fmt, out)
    assert list(tmp_path.iterdir()) == []
    if fmt == "torchscript":  # the CLI says so with exit 1 (the input was fine; the file was not)
        res = CliRunner().invoke(app, ["export", str(toy_run.dir), "--format", fmt, "--out", str(out)])
        assert res.exit_code == 1 and "does not match PyTorch" in res.output and not out.exists()


def test_export_rejects_bad_arguments(tiny_run, tmp_path: Path):
    res = CliRunner().invoke(app, ["export", str(tiny_run.dir), "--format", "tflite"])
    assert res.exit_code == 2 and "Unknown export format 'tflite'" in res.output
    for out in (tmp_path, tmp_path / "model.onnx"):  # a folder; the wrong suffix for torchscript
        res = CliRunner().invoke(app, ["export", str(tiny_run.dir), "--format", "torchscript", "--out", str(out)])
        assert res.exit_code == 2 and "must be a .pt file" in res.output
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    res = CliRunner().invoke(app, ["export", str(tmp_path / "bad.safetensors")])
    assert res.exit_code == 2 and "is not a readable headstart model" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]
    res = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output
