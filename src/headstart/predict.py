"""Using a trained model: class names and probabilities for new photos.

>>> model = headstart.load("runs/efficientnet_lite0-features-...")        # doctest: +SKIP
>>> [p.label for p in model.predict(["dish.jpg", "photos/"])]             # doctest: +SKIP
['Dessert', 'Soup', 'Rice', ...]

Images are prepared exactly as in training and evaluation (``headstart.data.decode_image``:
EXIF orientation, any mode to 8-bit RGB; then the preprocessing saved with the model), so a
photo gets the same probabilities here as in ``headstart evaluate``. A file that cannot be read
gives a ``Prediction`` with its ``error``; the others are still predicted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image

from headstart.backbones import Classifier, load_model
from headstart.data import IMAGE_EXTENSIONS, MAX_PIXELS, ImageError, _to_rgb, decode_image
from headstart.evaluation import load_run_model, predict_probs

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
    """A trained model with its class names and preprocessing, ready for new images."""

    def __init__(self, model: Classifier, classes: list[str], source: str = "", max_pixels: int = MAX_PIXELS):
        if len(classes) != model.config["num_classes"]:
            raise ValueError(f"{len(classes)} class names for a model with {model.config['num_classes']} outputs.")
        self.model, self.classes, self.source, self.max_pixels = model.eval(), list(classes), source, max_pixels

    @property
    def preprocessing(self):
        return self.model.preprocessing

    def prepare(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image as the model's (size, size, 3) uint8 input."""
        return np.asarray(self.preprocessing.resize_image(image), dtype=np.uint8)

    def probabilities(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, classes) softmax probabilities of prepared images."""
        return predict_probs(self.model, images, batch_size)

    def predict(self, inputs: ImageInput | Iterable[ImageInput], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
        """Predictions for image files, folders (walked recursively), PIL images or RGB arrays, in order.

        Always a list, one entry per image (a folder gives one per image in it).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1. Received: {top_k}")
        items = [inputs] if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)) else list(inputs)
        results: list[Prediction] = []
        ready: list[tuple[int, np.ndarray]] = []
        for n, item in enumerate(items):
            for source, image in self.read(item, n):
                if isinstance(image, str):
                    results.append(Prediction(source, error=image))
                else:
                    ready.append((len(results), self.prepare(image)))
                    results.append(Prediction(source))
        if ready:
            probs = self.probabilities([a for _, a in ready], batch_size)
            k = min(top_k, len(self.classes))
            for (i, _), p in zip(ready, probs):
                best = np.argsort(-p, kind="stable")[:k]
                results[i].top = [(self.classes[j], float(p[j])) for j in best]
        return results

    def read(self, item: ImageInput, n: int = 0):
        """(source, RGB image or the reason it cannot be read) for each image an input names."""
        if isinstance(item, Image.Image):
            yield f"<image {n}>", _to_rgb(item)
        elif isinstance(item, np.ndarray):
            if item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (1, 3, 4)):
                yield f"<array {n}>", _to_rgb(Image.fromarray(_as_uint8(item.squeeze())))
            else:
                yield f"<array {n}>", f"an image array must be (H, W), (H, W, 3) or (H, W, 4); received {item.shape}"
        else:
            path = Path(item)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                               and not any(part.startswith(".") for part in p.relative_to(path).parts))
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


def load(source: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Predictor:
    """A predictor from a run folder (its best checkpoint), a ``.ckpt`` checkpoint, or a model
    written by ``headstart.backbones.save_model`` (``.safetensors`` with class names)."""
    path = Path(source)
    if path.is_dir():
        ckpt = path / "checkpoints" / "best.ckpt"
        if not ckpt.is_file():
            hint = "it did not finish: resume it with headstart train --resume" if (path / "config.yaml").is_file() \
                else "it is not a headstart run"
            raise ValueError(f"{path} has no checkpoints/best.ckpt ({hint}). Pass a finished run folder.")
        path = ckpt
    if not path.is_file():
        raise ValueError(f"'{source}' does not exist. Pass a run folder (runs/NAME), a .ckpt or a .safetensors model.")
    if path.suffix == ".safetensors":
        model, extra = load_model(path)
    else:
        try:
            model, extra = load_run_model(path)
        except Exception as e:  # not a checkpoint, or not one of ours
            raise ValueError(f"{path} is not a headstart checkpoint ({type(e).__name__}: {e}).") from None
    classes = extra.get("classes")
    if not classes:
        classes = [str(i) for i in range(model.config["num_classes"])]
    return Predictor(model, classes, str(source), max_pixels)
