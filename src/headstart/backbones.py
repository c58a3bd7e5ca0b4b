"""Deprecated: where headstart 0.1.0's README had users import ``save_model``, ``load_saved_model`` and
``Preprocessing`` (and ``create_model``). They are public names of ``headstart`` now:
``from headstart import save_model, load_saved_model, Preprocessing``. This module answers the old
imports, with a DeprecationWarning, until the next minor release.
"""

from __future__ import annotations

import importlib
import warnings

_MOVED = {
    "save_model": "headstart.models.saving",
    "load_saved_model": "headstart.models.saving",
    "Preprocessing": "headstart.data.preprocessing",
    "create_model": "headstart.models.factory",
    "list_backbones": "headstart.models.factory",
    "Classifier": "headstart.models.classifier",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'headstart.backbones' has no attribute {name!r}")
    warnings.warn(
        f"headstart.backbones.{name} moved: use `from headstart import {name}`"
        if name != "Classifier"
        else "headstart.backbones.Classifier moved to headstart.models.classifier",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_MOVED[name]), name)
