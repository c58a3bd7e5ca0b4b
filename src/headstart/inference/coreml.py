"""Core ML (``.mlpackage``, an ML program for iOS 15 / macOS 12 and later) through coremltools: written from
``torch.export`` on any OS, run only on macOS.

Off macOS nothing can run the file, so ``check_spec`` checks what can be read without running it — input and
output names, types and shapes (any batch from 1 to ``MAX_BATCH``), the class names and preprocessing in its
user-defined metadata, and that its operations are those of the precision asked for — and says that no numeric
check was run. On macOS the file runs (``coreml_run``) and is checked against PyTorch as the other formats are.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.errors import ExportError

MAX_BATCH = 64  # the largest batch the file accepts (Core ML needs a bound)
RUNS_HERE = sys.platform == "darwin"
NOT_RUN = "not run: Core ML models run only on macOS; the file's structure and metadata were checked instead"


def write_coreml(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict, precision: str) -> None:
    """``graph`` as a Core ML ML program at ``path``: fp32 or fp16 arithmetic; int8: fp16 arithmetic with
    weights stored as int8 (per-channel, symmetric), which is what Core ML quantizes after training."""
    import coremltools as ct

    size = example.shape[-1]
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(graph, (example,), dynamic_shapes={"image": {0: batch}}).run_decompositions({})
    model = ct.convert(
        program,
        inputs=[ct.TensorType(name="image", shape=(ct.RangeDim(1, MAX_BATCH, 1), 3, size, size), dtype=np.float32)],
        outputs=[ct.TensorType(name="probabilities")],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS15,
    )
    if precision == "int8":
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        with warnings.catch_warnings():
            # An all-zero channel (EfficientNet-Lite0's ImageNet weights have 5) gets scale 0: coremltools casts its
            # 0/0 to int8 and warns, and the weight it dequantizes is still 0 × scale 0 = 0, as it was.
            warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
            model = linear_quantize_weights(model, config)
    model.user_defined_metadata["headstart"] = json.dumps(meta)
    model.short_description = f"Image classifier: {len(meta['classes'])} classes ({', '.join(meta['classes'][:5])}…)"
    model.input_description["image"] = meta["input"]["how"]
    model.output_description["probabilities"] = "softmax over the classes in user_defined_metadata['headstart']"
    model.save(str(path))


def operations(spec) -> set[str]:
    """The operation types of a Core ML ML program's spec."""
    return {
        op.type
        for function in spec.mlProgram.functions.values()
        for block in function.block_specializations.values()
        for op in block.operations
    }


def check_spec(path: Path, meta: dict, precision: str) -> dict:
    """What can be checked of a Core ML file without running it (module docstring); ExportError if any is off."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    size, found = meta["preprocessing"]["input_size"], []
    inputs, outputs = spec.description.input, spec.description.output
    if [i.name for i in inputs] != ["image"] or [o.name for o in outputs] != ["probabilities"]:
        found.append(f"inputs {[i.name for i in inputs]}, outputs {[o.name for o in outputs]}")
    else:
        array = inputs[0].type.multiArrayType
        ranges = [(r.lowerBound, r.upperBound) for r in array.shapeRange.sizeRanges]
        if ranges != [(1, MAX_BATCH), (3, 3), (size, size), (size, size)]:
            found.append(f"input shape ranges {ranges}")
        if array.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32:
            found.append("an input that is not float32")
    carried = json.loads(spec.description.metadata.userDefined.get("headstart", "null") or "null")
    if (
        not carried
        or carried.get("classes") != meta["classes"]
        or carried.get("preprocessing") != meta["preprocessing"]
    ):
        found.append("metadata without the run's class names and preprocessing")
    ops = operations(spec)
    half, int8 = "cast" in ops, any(op.startswith("constexpr_") for op in ops)
    if (half, int8) != {"fp32": (False, False), "fp16": (True, False), "int8": (True, True)}[precision]:
        found.append(f"operations of another precision than {precision} ({', '.join(sorted(ops))})")
    if found:
        raise ExportError(f"The Core ML file is not what was asked for: {'; '.join(found)}. Nothing was kept.")
    return {
        "numeric_check": NOT_RUN,
        "checked": ["input image: float32 (1-64, 3, size, size)", "output probabilities", "classes", "preprocessing"]
        + [f"{precision} operations"],
    }


def coreml_run(path: str | Path):
    """A function from a float32 NCHW batch to probabilities, running the file with Core ML (macOS only)."""
    import coremltools as ct

    model = ct.models.MLModel(str(path))
    return lambda x: np.asarray(model.predict({"image": x})["probabilities"])
