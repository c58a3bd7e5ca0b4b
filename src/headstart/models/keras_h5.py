"""The Keras ``.h5`` reader: the tutorial's VGG16 weights file (Keras 1 names such as
``block1_conv1_W_1:0``, or Keras 2's ``block1_conv1/kernel:0``), read with h5py as plain arrays, never
unpickled, each placed by its layer name and order with its shape checked.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from headstart.errors import WeightsError

log = logging.getLogger(__name__)

# Keras-1 weight names: "<layer>_W_1:0", "<layer>_b:0" (the tutorial's notop file); Keras 2:
# "<layer>/kernel:0", "<layer>/bias:0", possibly under a nested model's scope.
_KERAS1_NAME = re.compile(r"^(?P<layer>.+)_(?P<role>W|b)(?:_\d+)?$")
_ROLES = {"kernel": "kernel", "W": "kernel", "bias": "bias", "b": "bias"}


def _h5_text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _h5_names(group, name: str) -> list[str]:
    """A list attribute as Keras writes it: bytes (or str), possibly empty, possibly split into
    ``name0``, ``name1``, ... when too large for one HDF5 attribute."""
    if name in group.attrs:
        values = group.attrs[name]
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values, i = [*values, *group.attrs[f"{name}{i}"]], i + 1
    values = np.atleast_1d(values)  # an empty list comes back as an empty float array
    return [_h5_text(v) for v in values] if values.size else []


def _keras_weight_key(group_name: str, weight: str, position: int, count: int) -> tuple[str, str]:
    """(layer, role) of one of a layer group's ``count`` datasets, from its Keras name, else from
    its place in ``weight_names``.

    ``block1_conv1/kernel:0`` (Keras 2), ``vgg16/block1_conv1/kernel:0`` (a nested model) and
    ``block1_conv1_W_1:0`` (Keras 1) -> ("block1_conv1", "kernel"). A layer with two weights of other
    names (Keras 1's ``param_0``, ``param_1``) lists its kernel first, then its bias; any other name
    is kept as it is (``moving_mean``).
    """
    parts = weight.split(":")[0].split("/")
    last = parts[-1]
    if last in _ROLES:
        return parts[-2] if len(parts) > 1 else group_name, _ROLES[last]
    m = _KERAS1_NAME.match(last)
    if m:  # Keras 1 names carry their layer: the group's own, or a nested model's layer inside it
        flat = len(parts) == 1 and last.startswith(group_name + "_")
        return group_name if flat else m["layer"], _ROLES[m["role"]]
    layer = parts[-2] if len(parts) > 1 else group_name
    return layer, ("kernel", "bias")[position] if count == 2 else last


def read_keras_h5(path: Path) -> dict[str, np.ndarray]:
    """Weights of a Keras HDF5 file as ``{"block1_conv1/kernel": array, ...}``, Keras layouts.

    One group per layer, in the order of the root's ``layer_names`` attribute; each group's
    ``weight_names`` attribute lists its datasets, kernel first, then bias. Reads what
    ``model.save_weights("x.h5")`` writes in Keras 1 (the tutorial's
    ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``: ``block1_conv1_W_1:0``,
    ``block1_conv1_b_1:0``) and Keras 2 (``block1_conv1/kernel:0``, ``block1_conv1/bias:0``), and a
    whole model saved with ``model.save("x.h5")`` (the same under ``model_weights``; a nested model,
    such as VGG16 inside the tutorial's classifier, is one group listing all its layers' weights).
    Keys keep the file's order; the first of two tensors with one key wins.
    """
    try:
        import h5py
    except ImportError as e:
        raise WeightsError("Reading Keras .h5 weights needs h5py: pip install h5py") from e

    out: dict[str, np.ndarray] = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"Cannot read '{path}' as an HDF5 file ({e}). Pass a Keras .h5 weights file.") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if not ("layer_names" in root.attrs or "layer_names0" in root.attrs):
            raise WeightsError(
                f"{path} is not a Keras weights file (no 'layer_names' attribute). Save it from Keras "
                "with model.save_weights('weights.h5'), or pass a .pth/.safetensors file."
            )
        for layer in _h5_names(root, "layer_names"):
            if layer not in root:
                raise WeightsError(f"{path}: layer '{layer}' is listed in 'layer_names' but has no group.")
            group = root[layer]
            names = _h5_names(group, "weight_names")
            for position, weight in enumerate(names):
                if weight not in group:
                    raise WeightsError(
                        f"{path}: layer '{layer}' lists weight '{weight}' but the file has no such dataset."
                    )
                value = np.asarray(group[weight])
                key = "/".join(_keras_weight_key(layer, weight, position, len(names)))
                if key in out:
                    log.warning("%s: '%s' holds a second tensor for %s; the first is kept.", path, weight, key)
                else:
                    out[key] = value
    return out
