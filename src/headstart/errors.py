"""The errors a user can cause. Each message names what was received and how to fix it.

Every one is a ``HeadstartError`` (a ``ValueError``): the CLI catches that one type, prints the
message and exits with its ``exit_code`` (2: bad input), never a traceback.
"""

from __future__ import annotations


class HeadstartError(ValueError):
    """Input headstart cannot use as it is: an option, a file, a dataset, a run."""

    exit_code = 2


class ConfigError(HeadstartError):
    """An unknown or out-of-range option, in flags, a YAML file or a Python call."""


class DataError(HeadstartError):
    """A dataset that cannot be used as it is. The message names the path and the fix."""


class ImageError(HeadstartError):
    """One image that cannot be decoded; the message is the reason. ``kind``: "unreadable"
    (missing, empty, broken), "not_image" (no format Pillow knows) or "too_large" (pixel limit)."""

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


class WeightsError(HeadstartError):
    """Weights that cannot be had or do not fit. The message says what to do instead."""


class RunError(HeadstartError):
    """A run folder that is not a (finished) run, or a run that cannot start or resume as asked."""


class ExportError(HeadstartError):
    """An export that failed, or whose file does not compute what the PyTorch model computes."""

    exit_code = 1  # the input was fine; the exported file was not
