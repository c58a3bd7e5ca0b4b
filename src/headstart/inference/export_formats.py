"""How each export format is written and run: ONNX (fp32, fp16, int8), OpenVINO IR (fp32, fp16, int8), Core ML
(fp32, fp16, int8 weights; ``headstart.inference.coreml``), ``pt2`` (``torch.export``) and TorchScript, with the
metadata each carries. ``headstart.inference.export`` checks what these write; ``headstart.inference.exported``
reads it back.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.engines.onnx_files import write_onnx
from headstart.engines.runtimes import onnxruntime_run, openvino_run
from headstart.inference.coreml import coreml_run, write_coreml

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "coreml": ".mlpackage", "pt2": ".pt2", "torchscript": ".pt"}
# The precisions each format is written in here.
PRECISIONS = {
    "onnx": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "fp16", "int8"),
    "coreml": ("fp32", "fp16", "int8"),
    "pt2": ("fp32",),
    "torchscript": ("fp32",),
}
# The packages a format's converter needs beyond the default install, and the extra that brings them.
EXTRAS = {"openvino": ("openvino", "openvino"), "coreml": ("coremltools", "coreml")}
QUANTIZER = ("nncf", "openvino")  # OpenVINO int8: NNCF's post-training quantization
CALIBRATION_BATCH = 10  # int8: calibration images run at once (the percentile histograms need one size)


def _write_onnx(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    write_onnx(graph, example, path, input_name="image", output_name="probabilities", metadata=meta)


def _write_torchscript(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    with _torchscript_is_deprecated():
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"headstart.json": json.dumps(meta)})


def _write_pt2(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    """A ``torch.export`` ExportedProgram (TorchScript's successor), any batch size."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(graph, (example,), dynamic_shapes={"image": {0: batch}})
    torch.export.save(program, str(path), extra_files={"headstart.json": json.dumps(meta)})


def _write_openvino(
    graph: nn.Module, example: torch.Tensor, path: Path, meta: dict, precision: str, calibration
) -> None:
    """OpenVINO IR (``.xml`` and its ``.bin``) converted from the ONNX graph; fp16: the weights stored in half;
    int8: quantized by NNCF (``_openvino_int8``)."""
    import openvino as ov

    onnx_file = path.with_name(path.name + ".onnx")
    try:
        _write_onnx(graph, example, onnx_file, meta)
        model = ov.convert_model(str(onnx_file))
    finally:
        onnx_file.unlink(missing_ok=True)
    if precision == "int8":
        model = _openvino_int8(model, calibration)
    model.set_rt_info(json.dumps(meta), ["headstart"])
    ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")


def _openvino_int8(model, calibration: np.ndarray):
    """``model`` quantized by NNCF: int8 weights and activations, activation ranges from ``calibration`` (one
    image a step). The mixed preset (asymmetric activations, which after ReLU6 are all on one side of 0) and the
    full bias correction: on the demo at 64 px they took agreement with PyTorch from 93.7 % (NNCF's defaults) to
    95.0 %, the same as ONNX Runtime's int8."""
    import nncf

    steps = [calibration[i : i + 1] for i in range(len(calibration))]
    return nncf.quantize(
        model,
        nncf.Dataset(steps),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(steps),
        fast_bias_correction=False,
    )


def _onnx_fp16(path: Path, meta: dict) -> None:
    """The fp32 ONNX file at ``path`` rewritten in fp16 (inputs and outputs stay float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    _save_onnx(model, path, meta)


def _onnx_int8(path: Path, meta: dict, calibration: np.ndarray) -> None:
    """The fp32 ONNX file at ``path`` quantised to int8 by ONNX Runtime: static, QDQ, int8 weights per
    channel, uint8 activations whose ranges are the 99.999th percentile of what ``calibration`` images
    make of them (on the demo: 97 % agreement with PyTorch, where the plain min-max ranges gave 94 %)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    step = min(CALIBRATION_BATCH, len(calibration))  # batches of one size: the histograms need it

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + step] for i in range(0, len(calibration) - step + 1, step))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    quantized = path.with_name(path.name + ".int8.onnx")
    try:
        quantize_static(
            str(path),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
        )
        _save_onnx(onnx.load(str(quantized)), path, meta)
    finally:
        quantized.unlink(missing_ok=True)


def _save_onnx(model, path: Path, meta: dict) -> None:
    """``model`` saved at ``path``, carrying ``meta`` (the converters drop metadata_props)."""
    import onnx

    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "headstart", json.dumps(meta)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _torchscript_is_deprecated():
    # PyTorch deprecates TorchScript in favour of torch.export, but C++ and mobile runtimes still load it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def runner(path: str | Path, fmt: str):
    """A function from a float32 NCHW batch (numpy) to probabilities, running the exported file."""
    if fmt in ("onnx", "openvino"):  # as the engines run them
        return (onnxruntime_run if fmt == "onnx" else openvino_run)(Path(path), threads=torch.get_num_threads())
    if fmt == "coreml":
        return coreml_run(path)
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
    else:
        with _torchscript_is_deprecated():
            module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def write(fmt, precision, graph, example, path: Path, meta: dict, calibration) -> None:
    """``graph`` written at ``path`` as ``fmt`` in ``precision`` (int8: calibrated on ``calibration``)."""
    if fmt == "openvino":
        _write_openvino(graph, example, path, meta, precision, calibration)
    elif fmt == "coreml":
        write_coreml(graph, example, path, meta, precision)
    elif fmt == "onnx":
        _write_onnx(graph, example, path, meta)
        if precision == "fp16":
            _onnx_fp16(path, meta)
        elif precision == "int8":
            _onnx_int8(path, meta, calibration)
    else:
        (_write_pt2 if fmt == "pt2" else _write_torchscript)(graph, example, path, meta)


def companions(tmp: Path, path: Path) -> list[tuple[Path, Path]]:
    """The files a format writes, temporary and final: one, or OpenVINO's ``.xml`` and ``.bin``."""
    pairs = [(tmp, path)]
    if path.suffix == ".xml":
        pairs.append((tmp.with_suffix(".bin"), path.with_suffix(".bin")))
    return pairs
