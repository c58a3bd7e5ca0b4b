"""headstart: transfer learning for image classification, from a folder of photos to a report.

The Python API is the CLI's, command for command:

>>> import headstart
>>> summary = headstart.inspect("demo")                      # headstart inspect demo
>>> summary.counts["training"][:3]
[100, 100, 100]
>>> run = headstart.fit("demo", strategy="features")         # headstart train demo   # doctest: +SKIP
>>> ev = headstart.evaluate(run.dir)                          # headstart evaluate RUN # doctest: +SKIP
>>> headstart.load(run.dir).predict("photo.jpg")[0].label     # headstart predict RUN  # doctest: +SKIP

Everything is imported when first used, so ``import headstart`` is quick.
"""

from __future__ import annotations

import importlib

from headstart._version import __version__  # noqa: F401  (the package's version, as headstart.__version__)

# Public name -> (module, attribute): the API, loaded lazily (training pulls in Lightning).
_API = {
    "inspect": ("headstart.inspection", "inspect_dataset"),
    "load_dataset": ("headstart.data", "load_dataset"),
    "Dataset": ("headstart.data", "Dataset"),
    "verify_images": ("headstart.inspection", "verify_images"),
    "load_image": ("headstart.images", "load_image"),
    "advise": ("headstart.advice", "advise"),
    "fit": ("headstart.training", "fit"),
    "find_lr": ("headstart.training", "find_lr"),
    "LRFind": ("headstart.lr_finder", "LRFind"),
    "TrainConfig": ("headstart.config", "TrainConfig"),
    "Run": ("headstart.runs", "Run"),
    "evaluate": ("headstart.evaluation", "evaluate"),
    "compare": ("headstart.comparison", "compare"),
    "create_model": ("headstart.backbones", "create_model"),
    "load": ("headstart.predict", "load"),
    "Predictor": ("headstart.predict", "Predictor"),
    "Prediction": ("headstart.predict", "Prediction"),
    "export": ("headstart.exporting", "export"),
    "HeadstartError": ("headstart.errors", "HeadstartError"),
    "DataError": ("headstart.errors", "DataError"),
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
