"""Engines: what only infers runs in ONNX Runtime or OpenVINO when it matches PyTorch, else in PyTorch
with one warning; features computed once are kept under a key naming the engine that computed them."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart import create_model
from headstart.cli.main import app
from headstart.data.cache import ImageStore
from headstart.engines import choice, runtimes
from headstart.engines.choice import PARITY, Engine
from headstart.models.features import frozen_key
from helpers.datasets import PHOTOS


@pytest.fixture(scope="module")
def toy():
    """timm's smallest network (seeded random weights) and two batches of real photos at 32 px."""
    torch.manual_seed(0)
    model = create_model("test_efficientnet", 3, weights="none", input_size=32).eval()
    photos = [torch.from_numpy(np.asarray(p)).permute(2, 0, 1).float().div(255) for p in PHOTOS]
    x = torch.nn.functional.interpolate(torch.stack([p[:, :300, :300] for p in photos]), size=32)
    return model.features_module().eval(), x, x.flip(-1)[:1]


def _torch(module):
    return lambda x: module(x)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_an_engine_matches_pytorch_on_any_batch_size_and_says_so(toy, name):
    module, x, other = toy
    engine = Engine(name)
    run = engine.start(module, x, _torch(module), images=len(x))[0]
    assert run.engine == name and run.parity_rel_error <= PARITY["fp32"]
    assert engine.used == {
        "engine": name,
        "precision": "fp32",
        "parity_rel_error": pytest.approx(run.parity_rel_error, rel=1e-2),
    }
    with torch.inference_mode():
        expected = module(other)  # another batch size, other images: the graph's batch is dynamic
    assert torch.allclose(run(other), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_an_engine_that_computes_something_else_falls_back_to_pytorch_with_one_warning(toy, monkeypatch, caplog):
    module, x, _ = toy
    real = runtimes.RUNTIMES["onnxruntime"]
    monkeypatch.setitem(
        choice.RUNTIMES, "onnxruntime", lambda path, p, threads: lambda b: real(path, p, threads)(b) * 1.01
    )
    engine = Engine("onnxruntime")
    with caplog.at_level(logging.WARNING, logger="headstart.engines"):
        run = engine.start(module, x, _torch(module), images=len(x))[0]
        again = engine.start(module, x, _torch(module), images=len(x))[0]
    assert run.engine == again.engine == "torch" and engine.used == {"engine": "torch", "precision": "fp32"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "onnxruntime" in warnings[0] and "differs from PyTorch's by" in warnings[0]


def test_auto_converts_only_a_pass_long_enough_to_pay_and_stays_with_pytorch_on_a_gpu(toy, monkeypatch, tmp_path):
    module, x, _ = toy
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))  # nothing converted yet
    assert Engine("auto").start(module, x, _torch(module), images=len(x))[0].engine == "torch"  # seconds: not worth it
    monkeypatch.setattr(choice, "WORTH_CONVERTING_SECONDS", 0.0)
    engines = {"onnxruntime", "openvino"}
    assert Engine("auto").start(module, x, _torch(module), images=len(x))[0].engine in engines
    monkeypatch.setattr(choice, "WORTH_CONVERTING_SECONDS", 1e9)
    assert Engine("auto").start(module, x, _torch(module), images=1)[0].engine in engines  # converted once: reused
    assert Engine("auto").candidates(torch.device("cuda")) == []  # a GPU: PyTorch (bf16, as training)
    assert Engine("openvino").candidates(torch.device("cuda")) == ["openvino"]  # asked for by name: on the CPU


@pytest.mark.parametrize("faster", ["onnxruntime", "openvino"])
def test_auto_keeps_the_engine_that_was_faster_on_the_first_batch(toy, monkeypatch, faster):
    module, x, _ = toy
    monkeypatch.setattr(choice, "WORTH_CONVERTING_SECONDS", 0.0)
    monkeypatch.setattr(choice, "_seconds", lambda runner, first: 1.0 if runner.engine == faster else 2.0)
    engine = Engine("auto")
    assert engine.start(module, x, _torch(module), images=len(x))[0].engine == faster
    assert engine.used["engine"] == faster and engine.labels(torch.device("cpu")) == [
        "onnxruntime-fp32",
        "openvino-fp32",
        "torch-cpu",
    ]


def test_kept_outputs_are_keyed_by_engine_and_precision():
    store = ImageStore(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4), key="images")
    keys = {
        e: frozen_key(store, [0, 1, 2], "weights", e, torch.float32)
        for e in ("torch-cpu", "torch-cuda-bf16", "onnxruntime-fp32", "openvino-fp32", "openvino-bf16")
    }
    assert len(set(keys.values())) == len(keys)
    assert frozen_key(store, [0, 1, 2], "weights", "openvino-fp32", torch.float32) == keys["openvino-fp32"]
    assert frozen_key(store, [0, 1, 3], "weights", "openvino-fp32", torch.float32) != keys["openvino-fp32"]
    assert frozen_key(store, [0, 1, 2], "other weights", "openvino-fp32", torch.float32) != keys["openvino-fp32"]
    assert frozen_key(ImageStore(store.array, store.rows), [0], "weights", "torch-cpu", torch.float32) is None


def test_an_engine_that_is_not_installed_is_exit_2_naming_the_extra(tiny, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(runtimes.MODULES, "openvino", "openvino_is_not_installed")
    result = CliRunner().invoke(
        app, ["train", str(tiny), "--engine", "openvino", "--runs-dir", str(tmp_path), "--epochs", "1"]
    )
    assert result.exit_code == 2, result.output
    assert "pip install 'headstart[openvino]'" in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.skipif(runtimes.bf16_capable(), reason="this CPU has bf16 units")
def test_bf16_on_a_cpu_without_bf16_units_is_exit_2(tiny, tmp_path: Path):
    args = ["--engine", "openvino", "--engine-precision", "bf16", "--runs-dir", str(tmp_path), "--epochs", "1"]
    result = CliRunner().invoke(app, ["train", str(tiny), *args])
    assert result.exit_code == 2 and "no bf16 units" in " ".join(result.output.split()), result.output
    result = CliRunner().invoke(app, ["train", str(tiny), "--engine", "torch", "--engine-precision", "bf16"])
    assert result.exit_code == 2 and "bf16 is OpenVINO's" in " ".join(result.output.split()), result.output


def test_a_weight_changed_in_place_is_another_network(toy):
    module = copy.deepcopy(toy[0])
    engine = Engine("torch")
    before = engine.fingerprint(module, "pre")
    assert engine.fingerprint(module, "pre") == before != engine.fingerprint(module, "other preprocessing")
    with torch.no_grad():
        next(module.parameters()).add_(1.0)  # as training changes weights: in place
    assert engine.fingerprint(module, "pre") != before
