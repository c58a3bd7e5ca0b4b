"""headstart: transfer learning for image classification, from a folder of photos to a report.

>>> import headstart
>>> summary = headstart.inspect("demo")        # the embedded Fashion-MNIST subset
>>> summary.counts["training"][:3]
[100, 100, 100]
"""

from headstart.data import DataError, Dataset, load_dataset, load_image, verify_images
from headstart.data import inspect_dataset as inspect

__version__ = "0.1.0"


def __getattr__(name: str):
    # Training pulls in Lightning; import it only when asked, so `headstart inspect` starts fast.
    if name in ("fit", "Run"):
        from headstart import training

        return getattr(training, name)
    if name in ("load", "Predictor", "Prediction"):
        from headstart import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")
__all__ = ["DataError", "Dataset", "Prediction", "Predictor", "Run", "fit", "inspect", "load", "load_dataset",
           "load_image", "verify_images"]
