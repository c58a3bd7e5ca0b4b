"""Export a trained model to ONNX or TorchScript, checked against PyTorch before it is kept.

>>> result = export("runs/efficientnet_lite0-features-...", "onnx")      # doctest: +SKIP
>>> result.path, result.max_difference                                   # doctest: +SKIP
(PosixPath('runs/.../export/model.onnx'), 3.2e-07)

The exported graph takes what ``Predictor.prepare`` makes of a photo, as float32 NCHW RGB in
[0, 1] at the model's input size (any batch size), and returns the class probabilities; the
normalisation (mean, std) is inside it. Everything needed to prepare an input and to read the
output (input size, resize method, class names) travels with it: in the ONNX file's metadata
(key ``headstart``) and in a sidecar ``<file>.json`` for both formats.

After writing, the file is run (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) on
sample images of the run's data, and its probabilities must match PyTorch's within ``TOLERANCE``;
if they do not, nothing is kept and ``ExportError`` says by how much they differ.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart._version import __version__
from headstart.data.dataset import load_dataset_for
from headstart.engines.onnx_files import write_onnx
from headstart.engines.runtimes import onnxruntime_run
from headstart.errors import ConfigError, ExportError, HeadstartError
from headstart.inference.predict import Predictor, load
from headstart.runs.folder import Run, export_file
from headstart.utils.files import check_writable_dir

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # max absolute difference of probabilities against PyTorch
SAMPLES = 8


@dataclass
class Exported:
    path: Path
    sidecar: Path
    format: str
    max_difference: float
    samples: int


class WithSoftmax(nn.Module):
    """The graph that is exported: [0, 1] RGB images in, class probabilities out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).softmax(1)


def metadata(predictor: Predictor, fmt: str) -> dict:
    pre = predictor.preprocessing
    return {
        "format": fmt,
        "classes": predictor.classes,
        "model": predictor.model.config,
        "preprocessing": pre.to_dict(),
        "input": {
            "name": "image",
            "shape": ["batch", 3, pre.input_size, pre.input_size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "range": [0.0, 1.0],
            "how": f"decode to RGB, resize to {pre.input_size}x{pre.input_size} ({pre.resize}, "
            f"{pre.interpolation}), divide by 255; mean/std are applied inside the model",
        },
        "output": {
            "name": "probabilities",
            "shape": ["batch", len(predictor.classes)],
            "meaning": "softmax over classes",
        },
        "source": predictor.source,
        "headstart": __version__,
    }


def _graph(predictor: Predictor) -> nn.Module:
    return WithSoftmax(predictor.model).eval()


def _write_onnx(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    write_onnx(graph, example, path, input_name="image", output_name="probabilities", metadata=meta)


def _write_torchscript(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    with _torchscript_is_deprecated():
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"headstart.json": json.dumps(meta)})


@contextlib.contextmanager
def _torchscript_is_deprecated():
    # PyTorch deprecates TorchScript in favour of torch.export, but C++ and mobile runtimes still load it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def runner(path: str | Path, fmt: str):
    """A function from a float32 NCHW batch (numpy) to probabilities, running the exported file."""
    if fmt == "onnx":  # as the engines run it
        run = onnxruntime_run(Path(path))
        return lambda x: run(torch.from_numpy(x)).numpy()
    with _torchscript_is_deprecated():
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def sample_images(predictor: Predictor, n: int = SAMPLES) -> list[np.ndarray]:
    """Up to ``n`` prepared images from the evaluation split of the model's run, else seeded noise."""
    images: list[np.ndarray] = []
    if predictor.run_dir is not None:
        try:
            ds = load_dataset_for(Run.load(predictor.run_dir).config)
            for sample in [s for s in ds.samples if s.split == "evaluation"][: n * 2]:
                images += [predictor.prepare(img) for _, img in predictor.read(sample.path) if not isinstance(img, str)]
        except Exception as e:  # the run's data is elsewhere now
            log.warning("parity check: the run's data cannot be read (%s); using noise images", e)
    images = images[:n]
    size = predictor.preprocessing.input_size
    rng = np.random.default_rng(0)
    while len(images) < n:  # noise still exercises every layer
        images.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return images


def check_parity(
    predictor: Predictor,
    path: str | Path,
    fmt: str,
    images: list[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
) -> float:
    """Run the exported file on sample images, as a whole batch and one image alone; the largest
    absolute difference of probabilities against PyTorch. Raises ExportError above ``tolerance``."""
    images = images if images is not None else sample_images(predictor)
    expected = predictor.probabilities(images)
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    try:
        run = runner(path, fmt)
        got = [np.asarray(run(x)), np.asarray(run(x[:1]))]
    except Exception as e:
        raise ExportError(f"The exported {fmt} file does not run: {type(e).__name__}: {e}") from None
    diffs = []
    for out, ref in zip(got, (expected, expected[:1])):
        if out.shape != ref.shape:
            raise ExportError(
                f"The exported {fmt} model gives outputs of shape {out.shape}; PyTorch gives {ref.shape}."
            )
        diffs.append(float(np.abs(out - ref).max()) if np.isfinite(out).all() else float("inf"))
    diff = max(diffs)
    if not diff <= tolerance:
        raise ExportError(
            f"The exported {fmt} model does not match PyTorch: probabilities differ by up to "
            f"{diff:.3g} on {len(images)} sample images (allowed {tolerance:g}). Nothing was kept."
        )
    return diff


def export(source: str | os.PathLike | Predictor, fmt: str = "onnx", out: str | os.PathLike | None = None) -> Exported:
    """Write the model of a run (or any ``Predictor``) as ONNX or TorchScript, with its class names
    and preprocessing, and check it against PyTorch. Default file: ``<run>/export/model.<ext>``
    (beside the file for a saved ``.safetensors`` model)."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format '{fmt}'. Choose one of: {', '.join(FORMATS)}.")
    predictor = source if isinstance(source, Predictor) else load(source, device="cpu")  # exported on the CPU
    if out is None:
        out = export_file(predictor.run_dir or Path(predictor.source).parent, FORMATS[fmt])
    path, meta = Path(out), metadata(predictor, fmt)
    if path.is_dir() or path.suffix != FORMATS[fmt]:
        raise ConfigError(f"The output (--out) must be a {FORMATS[fmt]} file for {fmt}. Received: {path}")
    check_writable_dir(path.parent, "--out")
    sidecar = path.with_name(path.name + ".json")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{FORMATS[fmt]}")
    tmp_sidecar = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    size = predictor.preprocessing.input_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _write_onnx if fmt == "onnx" else _write_torchscript
        try:
            with torch.no_grad():
                writer(_graph(predictor), example, tmp, meta)
        except OSError:
            raise
        except Exception as e:
            raise ExportError(f"Exporting to {fmt} failed: {type(e).__name__}: {e}") from None
        diff = check_parity(predictor, tmp, fmt)
        tmp_sidecar.write_text(json.dumps({**meta, "parity_max_difference": diff}, indent=2) + "\n")
        os.replace(tmp, path)  # both written in full first: the model, then the sidecar that describes it
        os.replace(tmp_sidecar, sidecar)
    except OSError as e:
        raise HeadstartError(f"Cannot write {path}: {e.strerror or e}. Pass a writable --out.") from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
    return Exported(path, sidecar, fmt, diff, SAMPLES)


def read_metadata(path: str | Path) -> dict:
    """The metadata an exported file carries (the ONNX file's own, else the sidecar JSON)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        for entry in onnx.load(str(path), load_external_data=False).metadata_props:
            if entry.key == "headstart":
                return json.loads(entry.value)
    return json.loads(path.with_name(path.name + ".json").read_text())
