"""headstart: transfer learning for image classification, from a folder of photos to a report.

The Python API is the CLI's, command for command:

>>> import headstart
>>> summary = headstart.inspect("demo")                      # headstart inspect demo
>>> summary.counts["training"][:3]
[100, 100, 100]
>>> run = headstart.fit("demo", strategy="features")         # headstart train demo   # doctest: +SKIP
>>> ev = headstart.evaluate(run.dir)                          # headstart evaluate RUN # doctest: +SKIP
>>> headstart.load(run.dir).predict("photo.jpg")[0].label     # headstart predict RUN  # doctest: +SKIP
>>> headstart.load(run.dir).explain("photo.jpg")[0].map      # predict RUN --explain  # doctest: +SKIP
>>> headstart.audit("demo").label_issues[:3]                  # headstart audit demo   # doctest: +SKIP
>>> headstart.prepare("photos/", "s3://bucket/photos")         # headstart prepare      # doctest: +SKIP

Everything is imported when first used, so ``import headstart`` is quick.
"""

from __future__ import annotations

import importlib

from headstart._version import __version__  # noqa: F401  (headstart.__version__)

# Public name -> (module, attribute): the API, loaded lazily (training pulls in Lightning).
_API = {
    "inspect": ("headstart.data.inspection", "inspect_dataset"),
    "load_dataset": ("headstart.data.dataset", "load_dataset"),
    "Dataset": ("headstart.data.dataset", "Dataset"),
    "verify_images": ("headstart.data.inspection", "verify_images"),
    "prepare": ("headstart.preparing", "prepare"),
    "load_image": ("headstart.data.images", "load_image"),
    "Preprocessing": ("headstart.data.preprocessing", "Preprocessing"),
    "create_model": ("headstart.models.factory", "create_model"),
    "list_backbones": ("headstart.models.factory", "list_backbones"),
    "save_model": ("headstart.models.saving", "save_model"),
    "load_saved_model": ("headstart.models.saving", "load_saved_model"),
    "advise": ("headstart.advice.strategy", "advise"),
    "TrainConfig": ("headstart.config", "TrainConfig"),
    "Run": ("headstart.runs.folder", "Run"),
    "fit": ("headstart.training.fit", "fit"),
    "find_lr": ("headstart.training.fit", "find_lr"),
    "LRFind": ("headstart.training.lr_finder", "LRFind"),
    "evaluate": ("headstart.evaluation.evaluate", "evaluate"),
    "compare": ("headstart.comparison", "compare"),
    "audit": ("headstart.auditing.audit", "audit"),
    "load": ("headstart.inference.loading", "load"),
    "Predictor": ("headstart.inference.predict", "Predictor"),
    "ExportedPredictor": ("headstart.inference.exported", "ExportedPredictor"),
    "Prediction": ("headstart.inference.prediction", "Prediction"),
    "Explanation": ("headstart.inference.prediction", "Explanation"),
    "export": ("headstart.inference.export", "export"),
    "HeadstartError": ("headstart.errors", "HeadstartError"),
    "DataError": ("headstart.errors", "DataError"),
    "ConfigError": ("headstart.errors", "ConfigError"),
    "ImageError": ("headstart.errors", "ImageError"),
    "WeightsError": ("headstart.errors", "WeightsError"),
    "RunError": ("headstart.errors", "RunError"),
    "ExportError": ("headstart.errors", "ExportError"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
