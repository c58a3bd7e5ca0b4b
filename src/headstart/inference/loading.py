"""``headstart.load``: a predictor for what it is given — a run folder, checkpoint or saved model (PyTorch), or an
exported file (its own runtime, without importing PyTorch).

>>> model = headstart.load("runs/efficientnet_lite0-features-...")        # doctest: +SKIP
>>> model = headstart.load("runs/.../export/model-int8.onnx")            # doctest: +SKIP
>>> [p.label for p in model.predict(["dish.jpg", "photos/"])]             # doctest: +SKIP
['Dessert', 'Soup', 'Rice', ...]
"""

from __future__ import annotations

import os

from headstart.data.images import MAX_PIXELS
from headstart.inference.exported import is_exported, load_exported
from headstart.inference.prediction import ImagePredictor


def load(
    source: str | os.PathLike,
    max_pixels: int = MAX_PIXELS,
    device: str = "auto",
    engine: str = "auto",
    engine_precision: str = "fp32",
) -> ImagePredictor:
    """A predictor from a run folder, a ``.ckpt``, a saved ``.safetensors`` model (``headstart.inference.predict.load``,
    where ``device``, ``engine`` and ``engine_precision`` are explained), or an exported ``.onnx``, ``.xml``
    (OpenVINO) file (``headstart.inference.exported.load_exported``)."""
    if is_exported(source):
        return load_exported(source, max_pixels, device, engine, engine_precision)
    from headstart.inference.predict import load as load_run  # PyTorch: imported only for a run

    return load_run(source, max_pixels, device, engine, engine_precision)
