"""headstart: transfer learning for image classification, from a folder of photos to a report.

>>> import headstart
>>> summary = headstart.inspect("demo")        # the embedded Fashion-MNIST subset
>>> summary.counts["training"][:3]
[100, 100, 100]
"""

from headstart.data import DataError, Dataset, load_dataset, load_image, verify_images
from headstart.data import inspect_dataset as inspect

__version__ = "0.1.0"
__all__ = ["DataError", "Dataset", "inspect", "load_dataset", "load_image", "verify_images"]
