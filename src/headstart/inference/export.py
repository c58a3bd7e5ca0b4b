"""Export a trained model — ONNX, OpenVINO IR, Core ML, torch.export (``pt2``) or TorchScript; fp16 and int8
where the format runs them — and check the file against PyTorch before it is kept.

>>> result = export("runs/efficientnet_lite0-features-...", "onnx")      # doctest: +SKIP
>>> result.path, result.max_difference                                   # doctest: +SKIP
(PosixPath('runs/.../export/model.onnx'), 3.2e-07)
>>> export(run, "onnx", precision="int8").checks["agreement"]           # doctest: +SKIP
0.99

The exported graph takes what ``Predictor.prepare`` makes of a photo, as float32 NCHW RGB in
[0, 1] at the model's input size (any batch size), and returns the class probabilities; the
normalisation (mean, std) is inside it. Everything needed to prepare an input and to read the
output (input size, resize method, class names, the run) travels with it: in the file's own
metadata (ONNX ``metadata_props`` and OpenVINO ``rt_info``, key ``headstart``; ``pt2`` and TorchScript
as an extra file) and in a sidecar ``<file>.json``, which also records the checks.

After writing, the file runs (ONNX Runtime, OpenVINO, ``torch.export.load``, ``torch.jit.load``) on images
of the run's evaluation split. fp32: its probabilities must match PyTorch's within ``TOLERANCE``. fp16 and
int8 round on purpose, so they are judged by what a user sees: the share of images on which they pick
PyTorch's top class (at least ``MIN_AGREEMENT``, or ``min_agreement``) and the accuracy on those images,
beside PyTorch's. int8 is calibrated on images of the run's training split (``CALIBRATION_IMAGES``).
Core ML runs only on macOS: elsewhere its structure and metadata are checked, and the sidecar says that no
numeric check was run (``headstart.inference.coreml``). A file that fails its check is not kept
(``ExportError``, exit 1); a precision a format cannot run is refused before any work (exit 2), never
written as fp32; a converter that is not installed is exit 2 naming the extra that brings it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart._version import __version__
from headstart.data.dataset import load_dataset_for, multi_hot
from headstart.errors import ConfigError, ExportError, HeadstartError
from headstart.inference.coreml import RUNS_HERE, check_spec
from headstart.inference.export_formats import EXTRAS, FORMATS, PRECISIONS, QUANTIZER, companions, runner, write
from headstart.inference.exported import is_exported
from headstart.inference.predict import Predictor, load
from headstart.inference.prediction import as_batch
from headstart.runs.folder import Run, export_file
from headstart.utils.files import check_writable_dir

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # fp32: max absolute difference of probabilities against PyTorch
# fp16 and int8: the least share of evaluation images on which the file picks PyTorch's top class. fp16
# rounding only flips near-ties (1 in 100 is already many); static int8 moves more, and a model that
# disagrees on more than 1 image in 20 has lost accuracy a user would notice.
MIN_AGREEMENT = {"fp16": 0.99, "int8": 0.95}
SAMPLES = 8  # fp32 parity: images (of the evaluation split) run as one batch and one alone
CHECK_IMAGES = 300  # fp16, int8: evaluation images the agreement and accuracy are measured on
CALIBRATION_IMAGES = 300  # int8: training images its activation ranges are calibrated on
CALIBRATION_SPLITS = ("training", "validation")


@dataclass
class Exported:
    path: Path
    sidecar: Path
    format: str
    max_difference: float | None  # fp32: against PyTorch's probabilities; fp16, int8: measured, not the criterion;
    samples: int  # None: not run (Core ML off macOS)
    precision: str = "fp32"
    checks: dict | None = None  # fp16, int8: agreement, accuracy and PyTorch's accuracy, images, threshold


class WithSoftmax(nn.Module):
    """The graph that is exported: [0, 1] RGB images in, class probabilities out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).softmax(1)


class WithSigmoid(WithSoftmax):
    """A multi-label model's graph: [0, 1] RGB images in, a sigmoid a class out."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image).sigmoid()


def metadata(predictor: Predictor, fmt: str) -> dict:
    pre = predictor.preprocessing
    # a multi-label model's thresholds travel with it
    multi = {"task": "multi", "thresholds": [float(t) for t in predictor.thresholds]} if predictor.multi_label else {}
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
            "meaning": "a sigmoid a class; the image's labels are the classes at or above their thresholds"
            if predictor.multi_label
            else "softmax over classes",
        },
        "source": predictor.source,
        "headstart": __version__,
        **multi,
    }


def _graph(predictor: Predictor) -> nn.Module:
    return (WithSigmoid if predictor.multi_label else WithSoftmax)(predictor.model).eval()


def split_images(predictor: Predictor, split: str, n: int) -> tuple[list[np.ndarray], list[int]]:
    """Up to ``n`` prepared images of a split of the model's run, with their labels (none without a run,
    or when its data is elsewhere now)."""
    images: list[np.ndarray] = []
    labels: list[int] = []
    if predictor.run_dir is None:
        return images, labels
    try:
        ds = load_dataset_for(Run.load(predictor.run_dir).config)
        for sample in [s for s in ds.samples if s.split == split]:
            if len(images) >= n:
                break
            for _, img in predictor.read(sample.path):
                if not isinstance(img, str):
                    images.append(predictor.prepare(img))
                    labels.append(sample.label)
    except Exception as e:  # the run's data is elsewhere now
        log.warning("export check: the run's %s images cannot be read (%s)", split, e)
    return images[:n], labels[:n]


def sample_images(predictor: Predictor, n: int = SAMPLES) -> list[np.ndarray]:
    """Up to ``n`` prepared images from the evaluation split of the model's run, else seeded noise."""
    images = split_images(predictor, "evaluation", n)[0]
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
    x = as_batch(images)
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


def check_agreement(
    predictor: Predictor, path: Path, fmt: str, precision: str, min_agreement: float, n: int = CHECK_IMAGES
) -> dict:
    """A reduced-precision file on up to ``n`` evaluation images (noise where the run has none): how often it
    picks PyTorch's top class, and both accuracies. Raises ExportError below ``min_agreement``."""
    images, labels = split_images(predictor, "evaluation", n)
    images = images or sample_images(predictor, 32)
    expected = predictor.probabilities(images)
    try:
        run = runner(path, fmt)
        got = np.concatenate([np.asarray(run(as_batch(images[i : i + 32]))) for i in range(0, len(images), 32)])
    except Exception as e:
        raise ExportError(f"The exported {fmt} {precision} file does not run: {type(e).__name__}: {e}") from None
    multi = predictor.multi_label  # agreeing: the same labels (every class on the same side of its threshold)

    def decide(probs: np.ndarray) -> np.ndarray:
        return probs >= predictor.thresholds if multi else probs.argmax(1)

    def same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a == b).all(1) if multi else a == b

    agreement = float(same(decide(got), decide(expected)).mean())
    checks = {
        "agrees_on": "labels" if multi else "top class",  # multi-label: every class on PyTorch's side of its threshold
        "images": len(images),
        "agreement": round(agreement, 4),
        "min_agreement": min_agreement,
        "max_difference": round(float(np.abs(got - expected).max()), 6),
    }
    if labels:  # multi-label: exact match, every label of the image right
        y = multi_hot(labels, len(predictor.classes)) > 0 if multi else np.asarray(labels)
        checks["accuracy"] = round(float(same(decide(got), y).mean()), 4)
        checks["pytorch_accuracy"] = round(float(same(decide(expected), y).mean()), 4)
    if agreement < min_agreement:
        what = "gives PyTorch's labels" if multi else "picks PyTorch's top class"
        raise ExportError(
            f"The {precision} {fmt} model {what} on {agreement:.1%} of {len(images)} evaluation "
            f"images (required: {min_agreement:.0%}; --min-agreement sets it). Nothing was kept."
            + (
                f" Its accuracy there: {checks['accuracy']:.1%}, PyTorch's {checks['pytorch_accuracy']:.1%}."
                if labels
                else ""
            )
        )
    return checks


def check_precision(fmt: str, precision: str) -> None:
    """The formats and precisions written here; anything else is refused, never written as fp32."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format '{fmt}'. Choose one of: {', '.join(FORMATS)}.")
    if precision not in PRECISIONS[fmt]:
        can = ", ".join(f"{f} ({'/'.join(p)})" for f, p in PRECISIONS.items())
        raise ConfigError(
            f"{fmt} is exported in {' or '.join(PRECISIONS[fmt])} here, not {precision}. Formats and their "
            f"precisions: {can}. Received: --format {fmt} with {precision}."
        )


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_installed(fmt: str, precision: str) -> None:
    """A converter that is not installed: exit 2 naming the extra that brings it, before any work."""
    needs = [EXTRAS[fmt]] if fmt in EXTRAS else []
    needs += [QUANTIZER] if (fmt, precision) == ("openvino", "int8") else []
    for package, extra in needs:
        if not has_package(package):
            raise ConfigError(
                f"--format {fmt}{' --int8' if precision == 'int8' else ''} needs the {package} package: "
                f"pip install 'headstart[{extra}]' (or pip install {package}), or export --format onnx."
            )


def calibration_set(predictor: Predictor, calibration: str | os.PathLike, n: int) -> tuple[list[np.ndarray], dict]:
    """Up to ``n`` prepared images of the run's split named ``calibration``, or of a folder (walked recursively,
    unreadable files skipped), and what the sidecar records of them; a ConfigError when there are none."""
    if str(calibration) in CALIBRATION_SPLITS:
        images = split_images(predictor, str(calibration), n)[0]
        where = f"the run's {calibration} images, and none can be read from {predictor.run_dir or predictor.source}"
        record = {"split": str(calibration)}
    else:
        read = (image for _, image in predictor.read(calibration) if not isinstance(image, str))
        images = [predictor.prepare(image) for _, image in zip(range(n), read)]
        where, record = f"the images in {calibration}, and it holds none that can be read", {"folder": str(calibration)}
    if not images:
        raise ConfigError(f"int8 is calibrated on {where}. Pass --calibration training, validation or a photo folder.")
    return images, {**record, "images": len(images)}


def export(
    source: str | os.PathLike | Predictor,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    precision: str = "fp32",
    min_agreement: float | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    calibration: str | os.PathLike = "training",
) -> Exported:
    """Write the model of a run (or any ``Predictor``) as ``fmt`` in ``precision`` (fp32, fp16, int8), with
    its class names and preprocessing, and check it against PyTorch (module docstring). Default file:
    ``<run>/export/model[-fp16|-int8].<ext>`` (beside the file for a saved ``.safetensors`` model).
    int8 is calibrated on ``calibration_images`` images of the run's ``calibration`` split (training or
    validation: never the evaluation split, which grades the file), or of a folder of images."""
    check_precision(fmt, precision)
    if str(calibration) not in CALIBRATION_SPLITS and not Path(calibration).is_dir():
        raise ConfigError(
            f"--calibration is what int8 is calibrated on: the run's {' or '.join(CALIBRATION_SPLITS)} split, or a "
            "folder of images like those the model will see (not the evaluation split, which grades the file). "
            f"Received: --calibration {calibration}"
        )
    if min_agreement is not None and not 0 < min_agreement <= 1:
        raise ConfigError(f"--min-agreement is a share of images, above 0 and at most 1. Received: {min_agreement}")
    check_installed(fmt, precision)
    if not isinstance(source, Predictor) and is_exported(source):
        raise ConfigError(
            f"{source} is an exported file already: export from the run it came from (its sidecar .json names it, "
            "under 'source'), e.g. headstart export runs/NAME --format openvino."
        )
    predictor = source if isinstance(source, Predictor) else load(source, device="cpu")  # exported on the CPU
    ext = ("" if precision == "fp32" else f"-{precision}") + FORMATS[fmt]
    if out is None:
        out = export_file(predictor.run_dir or Path(predictor.source).parent, ext)
    path, meta = Path(out), {**metadata(predictor, fmt), "precision": precision}
    if (path.is_dir() and fmt != "coreml") or path.suffix != FORMATS[fmt]:
        raise ConfigError(f"The output (--out) must be a {FORMATS[fmt]} file for {fmt}. Received: {path}")
    check_writable_dir(path.parent, "--out")
    ranges = None  # int8: the images the activation ranges are calibrated on
    if precision == "int8":
        images, meta["calibration"] = calibration_set(predictor, calibration, calibration_images)
        ranges = as_batch(images)
    sidecar = path.with_name(path.name + ".json")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{FORMATS[fmt]}")
    tmp_sidecar = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    size = predictor.preprocessing.input_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with torch.no_grad():
                write(fmt, precision, _graph(predictor), example, tmp, meta, ranges)
        except (OSError, HeadstartError):
            raise
        except Exception as e:
            raise ExportError(f"Exporting to {fmt} {precision} failed: {type(e).__name__}: {e}") from None
        if fmt == "coreml" and not RUNS_HERE:
            diff, checks = None, check_spec(tmp, meta, precision)
        elif precision == "fp32":
            diff, checks = check_parity(predictor, tmp, fmt), None
        else:
            checks = check_agreement(predictor, tmp, fmt, precision, min_agreement or MIN_AGREEMENT[precision])
            diff = checks["max_difference"]
        record = {**meta, "parity_max_difference": diff, **({"checks": checks} if checks else {})}
        tmp_sidecar.write_text(json.dumps(record, indent=2) + "\n")
        for a, b in companions(tmp, path):  # the model (and OpenVINO's weights), then the sidecar describing it
            if b.is_dir():  # a Core ML package is a folder: the old one goes first
                shutil.rmtree(b)
            os.replace(a, b)
        os.replace(tmp_sidecar, sidecar)
    except OSError as e:
        raise HeadstartError(f"Cannot write {path}: {e.strerror or e}. Pass a writable --out.") from None
    finally:
        for leftover, _ in companions(tmp, path):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
    samples = SAMPLES if checks is None else checks.get("images", 0)
    return Exported(path, sidecar, fmt, diff, samples, precision, checks)
