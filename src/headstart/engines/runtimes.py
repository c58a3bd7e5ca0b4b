"""The inference engines that run an ONNX file: ONNX Runtime and OpenVINO, each a function from a
float32 NCHW batch (a CPU tensor) to its output, on as many threads as PyTorch uses.

Both are imported only when used. ONNX Runtime is a dependency (``headstart export`` checks its
files with it); OpenVINO is one on x86-64 and Arm machines; ``auto`` keeps whichever is faster
(docs/benchmarks.md, "Inference engines"). A missing one is a ``ConfigError`` naming how to get it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from headstart.errors import ConfigError

Run = Callable[[torch.Tensor], torch.Tensor]

# What pip installs each engine from.
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def installed(engine: str) -> bool:
    return engine == "torch" or importlib.util.find_spec(PACKAGES[engine]) is not None


def require(engine: str) -> None:
    if not installed(engine):
        raise ConfigError(
            f"--engine {engine}: the {PACKAGES[engine]} package is not installed. Install it with "
            f"pip install 'headstart[{engine}]' (or pip install {PACKAGES[engine]}), or pass --engine auto."
        )


def bf16_capable() -> bool:
    """Whether OpenVINO finds bf16 units on this CPU (AMX or AVX-512 BF16): reduced precision that pays."""
    if not installed("openvino"):
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _array(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


def onnxruntime_run(path: Path, precision: str = "fp32") -> Run:
    """``path`` run by ONNX Runtime's CPU provider, its graph optimisations all on."""
    import onnxruntime as ort

    if precision != "fp32":
        raise ConfigError(f"--engine onnxruntime runs fp32 here. Received: --engine-precision {precision}.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: _array(x)})[0])


def openvino_run(path: Path, precision: str = "fp32") -> Run:
    """``path`` read and compiled by OpenVINO for the CPU, with fp32 arithmetic or, asked for, bf16."""
    import openvino as ov

    core = ov.Core()
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = core.compile_model(
        core.read_model(str(path)),
        "CPU",
        {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": hint},
    )
    request = compiled.create_infer_request()
    return lambda x: torch.from_numpy(np.array(request.infer([_array(x)])[0]))


RUNTIMES = {"onnxruntime": onnxruntime_run, "openvino": openvino_run}
