"""Predicting from an exported file — ``.onnx`` (ONNX Runtime) or ``.xml`` (OpenVINO IR) — with numpy, Pillow and
that runtime alone: no PyTorch, timm or Lightning is imported, so a deployment box needs a few hundred MB, not
gigabytes (docs/deploy.md, "Without PyTorch").

>>> model = headstart.load("runs/.../export/model-int8.onnx")            # doctest: +SKIP
>>> model.predict("dish.jpg")[0].label                                   # doctest: +SKIP
'Dessert'

The file carries what predicting needs (``headstart export`` writes it: class names, preprocessing, the run it
came from), in its own metadata or the sidecar ``<file>.json``. That metadata is checked before it is believed
(``check_metadata``): names, sizes and numbers of the right kind, as many classes as the network has outputs (and,
for a multi-label model, a threshold in [0, 1] a class).
Images are read and prepared as a run folder's predictor does (``headstart.inference.prediction``), so both
give the same classes, and probabilities as close as the file's precision allows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from headstart.data.images import MAX_PIXELS
from headstart.data.preprocessing import Preprocessing
from headstart.engines.runtimes import PACKAGES, Run, installed, onnxruntime_run, onnxruntime_session, openvino_run
from headstart.errors import ConfigError, RunError
from headstart.inference.prediction import ImagePredictor, as_batch

# The files predicted from without PyTorch: suffix -> (format, engine that runs it, extra that installs it).
RUNTIMES = {".onnx": ("onnx", "onnxruntime", "runtime"), ".xml": ("openvino", "openvino", "openvino")}
# Exported too, but run elsewhere.
ELSEWHERE = {
    ".pt2": "PyTorch (torch.export.load)",
    ".pt": "PyTorch (torch.jit.load)",
    ".mlpackage": "Core ML on macOS (coremltools.models.MLModel, or Swift)",
}
KEY = "headstart"  # the metadata entry's name in each format


def is_exported(source: str | os.PathLike) -> bool:
    """Whether ``source`` names an exported file (by its suffix), not a run, checkpoint or saved model."""
    return Path(source).suffix.lower() in {*RUNTIMES, *ELSEWHERE}


class ExportedPredictor(ImagePredictor):
    """An exported file with its class names and preprocessing, run by its own runtime."""

    def __init__(self, path: Path, meta: dict, run: Run, max_pixels: int = MAX_PIXELS):
        thresholds = meta.get("thresholds") if meta.get("task") == "multi" else None  # a multi-label model's
        super().__init__(
            meta["classes"], Preprocessing.from_dict(meta["preprocessing"]), str(path), max_pixels, thresholds
        )
        self.path, self.meta, self.run = path, meta, run
        self.format, self.precision = meta.get("format"), meta.get("precision", "fp32")

    @property
    def backbone(self) -> str | None:
        return self.meta.get("model", {}).get("backbone")

    def probabilities(self, images: list[np.ndarray], batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """(N, classes) probabilities of prepared (H, W, 3) uint8 images (``tta``: averaged with their mirror
        images, as ``headstart.inference.predict.tta_views``)."""
        out = []
        for start in range(0, len(images), batch_size):
            x = as_batch(images[start : start + batch_size])
            views = (x, np.ascontiguousarray(x[..., ::-1])) if tta else (x,)
            out.append(np.mean([self._checked(self.run(v), len(x)) for v in views], axis=0))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def _checked(self, probs: np.ndarray, n: int) -> np.ndarray:
        if probs.shape != (n, len(self.classes)):
            raise RunError(
                f"{self.path} gave outputs of shape {probs.shape} for {n} image(s); its metadata names "
                f"{len(self.classes)} classes. Export the run again (headstart export RUN)."
            )
        return probs

    def warm_up(self) -> None:
        size = self.preprocessing.input_size
        self.probabilities([np.zeros((size, size, 3), np.uint8)])


def load_exported(
    source: str | os.PathLike,
    max_pixels: int = MAX_PIXELS,
    device: str = "auto",
    engine: str = "auto",
    engine_precision: str = "fp32",
) -> ExportedPredictor:
    """A predictor for an exported file, on the CPU, by the runtime its format needs (``RUNTIMES``)."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in ELSEWHERE:
        raise ConfigError(
            f"{path} runs in {ELSEWHERE[suffix]}. headstart predicts from a run folder or from an exported "
            f"{', '.join(RUNTIMES)} file: headstart export RUN --format onnx"
        )
    fmt, runtime, extra = RUNTIMES[suffix]
    chosen = {"--device": (device, ("auto", "cpu")), "--engine": (engine, ("auto", runtime))}
    chosen["--engine-precision"] = (engine_precision, ("fp32",))
    for flag, (value, allowed) in chosen.items():
        if value not in allowed:
            raise ConfigError(
                f"{flag} {value}: an exported {fmt} file runs in {runtime} on the CPU, in the precision it was "
                f"written in; {flag} is for run folders. Leave it out, or pass the run folder."
            )
    if not path.is_file():
        raise RunError(f"'{source}' does not exist. Pass an exported file (headstart export RUN) or a run folder.")
    if not installed(runtime):
        raise ConfigError(
            f"{path} needs {PACKAGES[runtime]} to run, which is not installed. Install it with "
            f"pip install 'headstart[{extra}]' (or pip install {PACKAGES[runtime]})."
        )
    try:
        text, handle = _open(path, fmt)
    except Exception as e:  # a damaged file, or not one this runtime reads
        raise RunError(f"{path} cannot be read by {runtime} ({type(e).__name__}: {_first_line(e)}).") from None
    meta = check_metadata(_parsed(path, text), path)
    run = onnxruntime_run(path, session=handle) if fmt == "onnx" else openvino_run(path, model=handle)
    predictor = ExportedPredictor(path, meta, run, max_pixels)
    try:  # one blank image: a file that does not take the input its metadata describes, or whose outputs are
        predictor.warm_up()  # not its classes, is refused now
    except RunError:
        raise
    except Exception as e:
        size = predictor.preprocessing.input_size
        raise RunError(
            f"{path} does not run on the {size}x{size} RGB images its metadata describes ({type(e).__name__}: "
            f"{_first_line(e)}). Export the run again (headstart export RUN)."
        ) from None
    return predictor


def _open(path: Path, fmt: str):
    """The metadata text the file carries (None if none) and the runtime's handle on it: an ONNX Runtime session
    (which reads the metadata too: the onnx package need not be installed), or OpenVINO's model, read once."""
    if fmt == "onnx":
        session = onnxruntime_session(path)
        return session.get_modelmeta().custom_metadata_map.get(KEY), session
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return (model.get_rt_info([KEY]).astype(str) if model.has_rt_info([KEY]) else None), model


def read_metadata(path: str | Path) -> dict:
    """The metadata an exported file carries (ONNX ``metadata_props``, OpenVINO ``rt_info``, key ``headstart``),
    else its sidecar ``<file>.json``. Parsed, not yet checked (``check_metadata``)."""
    path = Path(path)
    fmt = RUNTIMES.get(path.suffix.lower(), ("other",))[0]
    try:
        text = _open(path, fmt)[0] if fmt in ("onnx", "openvino") else None
    except Exception as e:  # a damaged file
        raise RunError(
            f"{path}: its headstart metadata cannot be read ({type(e).__name__}: {_first_line(e)})."
        ) from None
    return _parsed(path, text)


def _parsed(path: Path, text: str | None) -> dict:
    """``text`` (the file's own metadata), else the sidecar's, as JSON; a RunError when neither is there or readable."""
    sidecar = path.with_name(path.name + ".json")
    if text is None and sidecar.is_file():
        text = sidecar.read_text()
    if text is None:
        raise RunError(
            f"{path} carries no headstart metadata and has no {sidecar.name} beside it: the class names and "
            "preprocessing are unknown. Export it with headstart export RUN, which writes both."
        )
    try:
        return json.loads(text)
    except ValueError as e:
        raise RunError(f"{path}: its headstart metadata is not JSON ({_first_line(e)}).") from None


def check_metadata(meta, path: Path) -> dict:
    """``meta`` if it holds what predicting needs, each of the right kind; else a RunError naming what is wrong."""

    def bad(what: str) -> RunError:
        return RunError(f"{path}: its headstart metadata {what}. Export the run again (headstart export RUN).")

    if not isinstance(meta, dict):
        raise bad(f"is a {type(meta).__name__}, not a mapping")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise bad(f"has no list of class names (classes: {str(classes)[:80]!r})")
    if len(set(classes)) != len(classes):
        raise bad("names a class twice")
    pre = meta.get("preprocessing")
    if not isinstance(pre, dict):
        raise bad("has no preprocessing")
    try:
        Preprocessing.from_dict(pre)
    except (TypeError, ConfigError) as e:  # unknown keys, or values out of range
        raise bad(f"has an unusable preprocessing ({e})") from None
    if not isinstance(meta.get("model", {}), dict):
        raise bad("has a model entry that is not a mapping")
    if meta.get("task", "single") not in ("single", "multi"):
        raise bad(f"has an unknown task ({str(meta.get('task'))[:40]!r}; single or multi)")
    thresholds = meta.get("thresholds")
    if meta.get("task") == "multi" and not (
        isinstance(thresholds, list)
        and len(thresholds) == len(classes)
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds)
    ):
        raise bad(f"is multi-label but has no threshold in [0, 1] for each of its {len(classes)} classes")
    return meta


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]
