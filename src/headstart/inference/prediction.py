"""What predicting is, whatever runs the model: a ``Prediction`` per image, and the ``ImagePredictor`` that
reads images (files, folders, PIL images, arrays) as training did, prepares them at the model's input size
and ranks classes. It imports neither PyTorch nor timm: an exported file predicts with numpy, Pillow and
its runtime alone (``headstart.inference.exported``); a run folder with PyTorch (``headstart.inference.predict``).
``headstart.load`` (``headstart.inference.loading``) picks one by what it is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageOps

from headstart.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, decode_image, files_under, is_image_file, to_rgb
from headstart.data.preprocessing import Preprocessing
from headstart.errors import ConfigError, ImageError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
# How a class-activation map can be computed (``headstart.inference.explain.METHODS``), named here, without PyTorch,
# for the options of predict and serve.
EXPLAIN_METHODS = ("gradcam", "gradcam++", "layercam", "eigencam")


@dataclass
class Prediction:
    """One image's result: ``top`` is [(class, probability), ...], most probable first. A multi-label model's
    probabilities are a sigmoid a class, and ``labels`` the classes at or above their thresholds, most probable
    first."""

    source: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    labels: list[tuple[str, float]] | None = None  # multi-label models only

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
            if self.labels is not None:
                out["labels"] = [{"class": c, "probability": p} for c, p in self.labels]
        return out


@dataclass
class Explanation(Prediction):
    """A prediction with its class-activation map: ``image`` is the photo as the model saw it ((size, size, 3)
    uint8), ``map`` (size, size) float32 in [0, 1] where it found ``label`` (``method``: how)."""

    image: np.ndarray | None = None
    map: np.ndarray | None = None
    method: str = ""
    picture: str | None = None  # the PNG that shows it, once written (``headstart.inference.explain``)

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.error is None:
            out["method"] = self.method
            if self.picture:
                out["explanation"] = self.picture
        return out


class ImagePredictor:
    """Class names, preprocessing and a way to get probabilities: everything ``predict`` and ``serve`` need.

    Subclasses say how probabilities are computed (``probabilities``) and what the model is (``backbone``).
    """

    def __init__(
        self,
        classes: list[str],
        preprocessing: Preprocessing,
        source: str = "",
        max_pixels: int = MAX_PIXELS,
        thresholds=None,
    ):
        self.classes, self.source, self.max_pixels = list(classes), source, max_pixels
        self._preprocessing = preprocessing
        # A multi-label model's threshold a class, chosen on its validation split (None: one class an image).
        self.thresholds = None if thresholds is None else np.asarray(thresholds, np.float32)

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None

    def thresholds_for(self, threshold: float | None) -> np.ndarray | None:
        """The thresholds a prediction applies: the model's, or ``threshold`` for every class (``--threshold``)."""
        if threshold is None:
            return self.thresholds
        if not self.multi_label:
            raise ConfigError(
                f"--threshold applies to multi-label models (several classes an image); {self.source or 'this model'} "
                "gives one class an image. Leave it out."
            )
        if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
            raise ConfigError(f"A threshold is a probability between 0 and 1 (exclusive). Received: {threshold!r}")
        return np.full(len(self.classes), threshold, np.float32)

    @property
    def preprocessing(self) -> Preprocessing:
        return self._preprocessing

    @property
    def backbone(self) -> str | None:
        return None

    def probabilities(self, images: list[np.ndarray], batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """(N, classes) softmax probabilities of prepared images (multi-label: a sigmoid a class; ``tta``: averaged
        with their mirror images)."""
        raise NotImplementedError

    def warm_up(self) -> None:
        """Whatever is slow on the first request, done now (``serve``)."""

    def prepare(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image as the model's (size, size, 3) uint8 input."""
        return np.asarray(self.preprocessing.resize_image(image), dtype=np.uint8)

    def top(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k most probable classes of one probability vector, most probable first."""
        best = np.argsort(-probs, kind="stable")[: min(k, len(self.classes))]
        return [(self.classes[j], float(probs[j])) for j in best]

    def labels_of(self, probs: np.ndarray, thresholds: np.ndarray) -> list[tuple[str, float]]:
        """A multi-label model's labels for one probability vector: each class at or above its threshold, most
        probable first."""
        order = np.argsort(-probs, kind="stable")
        return [(self.classes[j], float(probs[j])) for j in order if probs[j] >= thresholds[j]]

    def predict(
        self,
        inputs: ImageInput | Iterable[ImageInput],
        top_k: int = 3,
        batch_size: int = 32,
        tta: bool = False,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Predictions for image files, folders (walked recursively), PIL images or RGB arrays, in order.

        Always a list, one entry per image (a folder gives one per image in it). Images are decoded,
        prepared and predicted ``batch_size`` at a time: memory does not grow with the input.
        ``tta``: each image's probabilities averaged with its mirror image's. A multi-label model also gives each
        image's ``labels``, at its classes' thresholds or at ``threshold`` for every class.
        """
        thresholds = self.thresholds_for(threshold)
        results: list[Prediction] = []
        for batch, prepared in self.batches(inputs, top_k, batch_size, Prediction):
            self.rank(batch, self.probabilities(prepared, batch_size, tta) if prepared else [], top_k, thresholds)
            results += batch
        return results

    def explain(
        self,
        inputs: ImageInput | Iterable[ImageInput],
        method: str = "gradcam",
        top_k: int = 3,
        batch_size: int = 16,
        threshold: float | None = None,
    ) -> list[Explanation]:
        """As ``predict``, each with its class-activation map (``headstart.inference.explain``): needs the model's
        layers, so a run folder or checkpoint, not an exported file."""
        raise ConfigError(
            f"Explanations need the model's layers; {self.source or 'this model'} is an exported file. "
            "Explain with the run folder it was exported from."
        )

    def maps(self, images: list[np.ndarray], classes: list[int], method: str = "gradcam", batch_size: int = 16):
        """(N, size, size) class-activation maps of prepared images (``explain``); None: this model cannot."""
        return None

    def batches(self, inputs, top_k: int, batch_size: int, kind: type = Prediction):
        """(results, prepared images) a batch at a time, for every image the inputs name, in order: one
        ``kind`` (Prediction or Explanation) per image; the readable ones (no ``error``) in the order of
        the prepared images."""
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1. Received: {top_k}")
        items = [inputs] if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)) else list(inputs)
        results: list = []
        pending: list[np.ndarray] = []
        for n, item in enumerate(items):
            for source, image in self.read(item, n):
                results.append(kind(source, error=image if isinstance(image, str) else None))
                if not isinstance(image, str):
                    pending.append(self.prepare(image))
                    if len(pending) == batch_size:
                        yield results, pending
                        results, pending = [], []
        if results:
            yield results, pending

    def rank(self, results: list[Prediction], probs, top_k: int, thresholds: np.ndarray | None = None) -> None:
        """Each readable result's top classes from its row of ``probs`` (and labels, at ``thresholds``)."""
        for r, p in zip([r for r in results if r.error is None], probs):
            r.top = self.top(p, top_k)
            if thresholds is not None:
                r.labels = self.labels_of(p, thresholds)

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


def as_batch(images: list[np.ndarray]) -> np.ndarray:
    """Prepared images (HWC uint8) as an exported graph takes them: float32 NCHW in [0, 1]."""
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    return np.clip(np.rint(a * 255 if a.max() <= 1.0 else a), 0, 255).astype(np.uint8)
