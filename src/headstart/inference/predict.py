"""Using a trained model with PyTorch: class names and probabilities for new photos.

>>> model = headstart.load("runs/efficientnet_lite0-features-...")        # doctest: +SKIP
>>> [p.label for p in model.predict(["dish.jpg", "photos/"])]             # doctest: +SKIP
['Dessert', 'Soup', 'Rice', ...]

Images are prepared exactly as in training and evaluation (``headstart.data.images.decode_image``:
EXIF orientation, any mode to 8-bit RGB; then the preprocessing saved with the model), so a
photo gets the same probabilities here as in ``headstart evaluate``. A file that cannot be read
gives a ``Prediction`` with its ``error``; the others are still predicted. Reading, preparing and
ranking are ``headstart.inference.prediction``'s, shared with exported files.

``tta=True`` (test-time augmentation) averages the softmax of each image and of its mirror image
(``predict_probs``): twice the compute, usually a little more accurate.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from headstart.data.images import MAX_PIXELS
from headstart.engines.choice import Engine
from headstart.errors import ConfigError
from headstart.inference.explain import check_method, class_maps
from headstart.inference.prediction import Explanation, ImageInput, ImagePredictor, Prediction  # noqa: F401  (old home)
from headstart.models.classifier import Classifier
from headstart.runs.checkpoints import load_model
from headstart.utils.devices import device as pick_device


class Predictor(ImagePredictor):
    """A trained PyTorch model with its class names and preprocessing, ready for new images.

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
        thresholds=None,
    ):
        if len(classes) != model.config["num_classes"]:
            raise ConfigError(f"{len(classes)} class names for a model with {model.config['num_classes']} outputs.")
        if thresholds is not None and len(thresholds) != len(classes):
            raise ConfigError(f"{len(thresholds)} thresholds for a model with {len(classes)} classes.")
        super().__init__(classes, model.preprocessing, source, max_pixels, thresholds)
        self.model, self.run_dir = model.eval(), run_dir
        self.engine = engine  # what runs the model (headstart.engines; None: PyTorch)

    @property
    def preprocessing(self):
        return self.model.preprocessing

    @property
    def backbone(self) -> str | None:
        return self.model.config.get("backbone")

    def probabilities(self, images: list[np.ndarray], batch_size: int = 32, tta: bool = False) -> np.ndarray:
        """(N, classes) softmax probabilities of prepared images (multi-label: a sigmoid a class; ``tta``: averaged
        with their mirror images)."""
        return predict_probs(self.model, images, batch_size, tta, self.engine, self.multi_label)

    def explain(
        self, inputs, method: str = "gradcam", top_k: int = 3, batch_size: int = 16, threshold: float | None = None
    ) -> list[Explanation]:
        """As ``predict``, each with its class-activation map for its most probable class
        (``headstart.inference.explain.METHODS``): ``e.map`` (size, size) in [0, 1] over ``e.image``."""
        check_method(method)
        thresholds = self.thresholds_for(threshold)
        results: list[Explanation] = []
        for batch, prepared in self.batches(inputs, top_k, batch_size, Explanation):
            probs = self.probabilities(prepared, batch_size) if prepared else np.zeros((0, len(self.classes)))
            self.rank(batch, probs, top_k, thresholds)
            maps = self.maps(prepared, probs.argmax(1).tolist(), method, batch_size)
            for e, image, cam in zip([e for e in batch if e.error is None], prepared, maps):
                e.image, e.map, e.method = image, cam, method
            results += batch
        return results

    def maps(self, images: list[np.ndarray], classes: list[int], method: str = "gradcam", batch_size: int = 16):
        """(N, size, size) class-activation maps of prepared images, each for its class in ``classes``."""
        return class_maps(self.model, images, method, classes, batch_size)

    def warm_up(self) -> None:
        """Decide what runs the model now, for a long run of requests (``serve``): with ``engine`` auto on a
        CPU the model is converted and checked here, not on the first request."""
        size = self.preprocessing.input_size
        predict_views(self.model, [np.zeros((size, size, 3), np.uint8)], engine=self.engine, passes=10**9)


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
    CPU, ``auto`` converts the model once a pass is long enough to pay for it). ``headstart.load`` also
    takes exported files (``headstart.inference.loading``)."""
    runs = Engine(engine, engine_precision)
    runs.candidates(pick_device(device))  # not installed, or bf16 without bf16 units: said now
    model, meta, run_dir = load_model(source)
    model.to(pick_device(device))
    classes = meta.get("classes") or [str(i) for i in range(model.config["num_classes"])]
    thresholds = None
    if meta.get("task") == "multi":  # chosen on validation; 0.5 each in a checkpoint saved before any validation
        thresholds = meta.get("thresholds") or [0.5] * len(classes)
    return Predictor(model, classes, str(source), max_pixels, run_dir, runs, thresholds)


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
    sigmoid: bool = False,
) -> np.ndarray:
    """(views, N, classes) softmax probabilities for a sequence of (H, W, 3) uint8 arrays at the
    model's input size: one view, the images; with ``tta``, each of ``tta_views``. ``engine``: what
    runs the model (None: PyTorch); ``passes``: the images it will run in all (default: these);
    ``sigmoid``: a multi-label model's probabilities, a sigmoid a class."""
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
        out.append(np.stack([(o.float().sigmoid() if sigmoid else o.float().softmax(1)).cpu().numpy() for o in outs]))
    views = 2 if tta else 1
    return np.concatenate(out, 1) if out else np.zeros((views, 0, model.config["num_classes"]), dtype=np.float32)


def _on(model: Classifier, device: torch.device):
    """PyTorch's forward pass of a CPU batch on ``device``."""
    return lambda x: model(x.to(device))


def predict_probs(
    model: Classifier,
    images,
    batch_size: int = 64,
    tta: bool = False,
    engine: Engine | None = None,
    sigmoid: bool = False,
) -> np.ndarray:
    """(N, classes) softmax probabilities (``sigmoid``: a sigmoid a class) of (H, W, 3) uint8 arrays at the model's
    input size; ``tta``: the mean over the test-time views (``tta_views``)."""
    return predict_views(model, images, batch_size, tta, engine, sigmoid=sigmoid).mean(0)
