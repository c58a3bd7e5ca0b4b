"""Using a trained model: class names and probabilities for new photos.

>>> model = headstart.load("runs/efficientnet_lite0-features-...")        # doctest: +SKIP
>>> [p.label for p in model.predict(["dish.jpg", "photos/"])]             # doctest: +SKIP
['Dessert', 'Soup', 'Rice', ...]

Images are prepared exactly as in training and evaluation (``headstart.data.images.decode_image``:
EXIF orientation, any mode to 8-bit RGB; then the preprocessing saved with the model), so a
photo gets the same probabilities here as in ``headstart evaluate``. A file that cannot be read
gives a ``Prediction`` with its ``error``; the others are still predicted.

``tta=True`` (test-time augmentation) averages the softmax of each image and of its mirror image
(``predict_probs``): twice the compute, usually a little more accurate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from headstart.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, decode_image, files_under, is_image_file, to_rgb
from headstart.engines.choice import Engine
from headstart.errors import ConfigError, ImageError
from headstart.models.classifier import Classifier
from headstart.runs.checkpoints import load_model
from headstart.utils.devices import device as pick_device

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass
class Prediction:
    """One image's result: ``top`` is [(class, probability), ...], most probable first."""

    source: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict:
        out: dict = {"source": self.source}
        if self.error:
            out["error"] = self.error
        else:
            out["label"], out["probability"] = self.label, self.probability
            out["top"] = [{"class": c, "probability": p} for c, p in self.top]
        return out


class Predictor:
    """A trained model with its class names and preprocessing, ready for new images.

    ``run_dir`` is the run the model comes from (None for a saved ``.safetensors`` model).
    """

    def __init__(
        self,
        model: Classifier,
        classes: list[str],
        source: str = "",
        max_pixels: int = MAX_PIXELS,
        run_dir: Path | None = None,
        engine: Engine | None = None,
    ):
        if len(classes) != model.config["num_classes"]:
            raise ConfigError(f"{len(classes)} class names for a model with {model.config['num_classes']} outputs.")
        self.model, self.classes, self.source, self.max_pixels = model.eval(), list(classes), source, max_pixels
        self.run_dir = run_dir
        self.engine = engine  # what runs the model (headstart.engines; None: PyTorch)

    @property
    def preprocessing(self):
        return self.model.preprocessing

    def prepare(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image as the model's (size, size, 3) uint8 input."""
        return np.asarray(self.preprocessing.resize_image(image), dtype=np.uint8)

    def probabilities(self, images: list[np.ndarray], batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """(N, classes) softmax probabilities of prepared images (``tta``: averaged with their mirror images)."""
        return predict_probs(self.model, images, batch_size, tta, self.engine)

    def warm_up(self) -> None:
        """Decide what runs the model now, for a long run of requests (``serve``): with ``engine`` auto on a
        CPU the model is converted and checked here, not on the first request."""
        size = self.preprocessing.input_size
        predict_views(self.model, [np.zeros((size, size, 3), np.uint8)], engine=self.engine, passes=10**9)

    def top(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k most probable classes of one probability vector, most probable first."""
        best = np.argsort(-probs, kind="stable")[: min(k, len(self.classes))]
        return [(self.classes[j], float(probs[j])) for j in best]

    def predict(
        self, inputs: ImageInput | Iterable[ImageInput], top_k: int = 3, batch_size: int = 32, tta: bool = False
    ) -> list[Prediction]:
        """Predictions for image files, folders (walked recursively), PIL images or RGB arrays, in order.

        Always a list, one entry per image (a folder gives one per image in it). Images are decoded,
        prepared and predicted ``batch_size`` at a time: memory does not grow with the input.
        ``tta``: each image's probabilities averaged with its mirror image's (``predict_probs``).
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1. Received: {top_k}")
        items = [inputs] if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)) else list(inputs)
        results: list[Prediction] = []
        pending: list[tuple[Prediction, np.ndarray]] = []

        def flush() -> None:
            for (pred, _), p in zip(pending, self.probabilities([a for _, a in pending], batch_size, tta)):
                pred.top = self.top(p, top_k)
            pending.clear()

        for n, item in enumerate(items):
            for source, image in self.read(item, n):
                results.append(Prediction(source, error=image if isinstance(image, str) else None))
                if not isinstance(image, str):
                    pending.append((results[-1], self.prepare(image)))
                    if len(pending) == batch_size:
                        flush()
        flush()
        return results

    def read(self, item: ImageInput, n: int = 0):
        """(source, RGB image or the reason it cannot be read) for each image an input names,
        decoded as in training (EXIF orientation applied, any mode to 8-bit RGB)."""
        if isinstance(item, Image.Image):
            # EXIF orientation only for an image as opened from a file: one already turned upright keeps its EXIF.
            yield f"<image {n}>", to_rgb(ImageOps.exif_transpose(item) if item.format else item)
        elif isinstance(item, np.ndarray):
            if item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (1, 3, 4)):
                pixels = item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item
                yield f"<array {n}>", to_rgb(Image.fromarray(_as_uint8(pixels)))
            else:
                yield (
                    f"<array {n}>",
                    f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); received {item.shape}",
                )
        else:
            path = Path(item)
            if path.is_dir():
                files = [f for f in files_under(path) if is_image_file(f)]
                if not files:
                    yield str(path), f"no images in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
                for f in files:
                    yield from self.read(f, n)
            elif not path.exists():
                yield str(path), "no such file or folder"
            else:
                try:
                    yield str(path), decode_image(path, self.max_pixels)[0]
                except ImageError as e:
                    yield str(path), str(e)


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    return np.clip(np.rint(a * 255 if a.max() <= 1.0 else a), 0, 255).astype(np.uint8)


def load(
    source: str | os.PathLike,
    max_pixels: int = MAX_PIXELS,
    device: str = "auto",
    engine: str = "auto",
    engine_precision: str = "fp32",
) -> Predictor:
    """A predictor from a run folder (its best checkpoint), a ``.ckpt`` checkpoint, or a model
    written by ``headstart.models.saving.save_model`` (``.safetensors`` with class names), on
    ``device`` (``auto``: a GPU where there is one), run by ``engine`` (``headstart.engines``: on a
    CPU, ``auto`` converts the model once a pass is long enough to pay for it)."""
    runs = Engine(engine, engine_precision)
    runs.candidates(pick_device(device))  # not installed, or bf16 without bf16 units: said now
    model, meta, run_dir = load_model(source)
    model.to(pick_device(device))
    classes = meta.get("classes") or [str(i) for i in range(model.config["num_classes"])]
    return Predictor(model, classes, str(source), max_pixels, run_dir, runs)


def tta_views(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The views test-time augmentation averages over: an (N, C, H, W) batch and its mirror image.

    Only the horizontal flip: a mirrored photo is as natural as the photo (training's augmentation
    flips too), and it costs one pass more. It gave +0.6 to +1.4 points on food photos (``features`` at
    224 and 128 px; docs/benchmarks.md, "Food photos"). Crops are not used: each costs one more pass and
    cuts off part of a photo that is usually framed on its subject.
    """
    return x, x.flip(-1)


@torch.inference_mode()
def predict_views(
    model: Classifier,
    images,
    batch_size: int = 64,
    tta: bool = False,
    engine: Engine | None = None,
    passes: int | None = None,
) -> np.ndarray:
    """(views, N, classes) softmax probabilities for a sequence of (H, W, 3) uint8 arrays at the
    model's input size: one view, the images; with ``tta``, each of ``tta_views``. ``engine``: what
    runs the model (None: PyTorch); ``passes``: the images it will run in all (default: these)."""
    device = next(model.parameters()).device
    out, run = [], None
    for start in range(0, len(images), batch_size):
        batch = np.stack([np.asarray(images[i]) for i in range(start, min(start + batch_size, len(images)))])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)
        views = tta_views(x) if tta else (x,)
        if run is None and engine is not None:  # decided on the first batch (checked against PyTorch)
            passes = passes or len(images) * len(views)
            run, first = engine.start(model, x, _on(model, device), repr(model.preprocessing), passes)
            outs = [first, *(run(v) for v in views[1:])]
        else:
            run = run or _on(model, device)
            outs = [run(v) for v in views]
        out.append(np.stack([o.float().softmax(1).cpu().numpy() for o in outs]))
    views = 2 if tta else 1
    return np.concatenate(out, 1) if out else np.zeros((views, 0, model.config["num_classes"]), dtype=np.float32)


def _on(model: Classifier, device: torch.device):
    """PyTorch's forward pass of a CPU batch on ``device``."""
    return lambda x: model(x.to(device))


def predict_probs(
    model: Classifier, images, batch_size: int = 64, tta: bool = False, engine: Engine | None = None
) -> np.ndarray:
    """(N, classes) softmax probabilities of (H, W, 3) uint8 arrays at the model's input size;
    ``tta``: the mean over the test-time views (``tta_views``)."""
    return predict_views(model, images, batch_size, tta, engine).mean(0)
