"""The inference engines that run an exported network: ONNX Runtime (``.onnx``) and OpenVINO (``.onnx``,
``.xml``), each a function from a float32 NCHW batch (numpy) to its output. They serve the
frozen pass in training (``headstart.engines.choice``, on as many threads as PyTorch uses) and exported
files alike (``headstart.inference.exported``, without PyTorch: nothing here imports it).

Both are imported only when used. ONNX Runtime is a dependency (``headstart export`` checks its
files with it); OpenVINO is one on x86-64 and Arm machines; ``auto`` keeps whichever is faster
(docs/benchmarks.md, "Inference engines"). A missing one is a ``ConfigError`` naming how to get it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from headstart.errors import ConfigError

Run = Callable[[np.ndarray], np.ndarray]

# What pip installs each engine from, and the module it imports.
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def installed(engine: str) -> bool:
    return engine == "torch" or importlib.util.find_spec(MODULES[engine]) is not None


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


def onnxruntime_session(path: Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU for ``path``, its graph optimisations all on (``threads``: None, the
    runtime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_run(path: Path, precision: str = "fp32", threads: int | None = None, session=None) -> Run:
    """``path`` run by ONNX Runtime's CPU provider (in ``session``, when it is open already)."""
    if precision != "fp32":
        raise ConfigError(f"--engine onnxruntime runs fp32 here. Received: --engine-precision {precision}.")
    session = session or onnxruntime_session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def openvino_run(path: Path, precision: str = "fp32", threads: int | None = None, model=None) -> Run:
    """``path`` read (or ``model``, read already) and compiled by OpenVINO for the CPU, with fp32 arithmetic or,
    asked for, bf16."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    model = model if model is not None else core.read_model(str(path))
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda x: np.array(request.infer([np.ascontiguousarray(x, np.float32)])[0])


RUNTIMES = {"onnxruntime": onnxruntime_run, "openvino": openvino_run}
