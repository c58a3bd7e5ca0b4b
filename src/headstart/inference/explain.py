"""Class-activation maps: where in a photo the model found the class it gives, through the grad-cam
library (pytorch-grad-cam), not a re-implementation.

>>> model = headstart.load("runs/efficientnet_lite0-features-...")            # doctest: +SKIP
>>> e = model.explain(["dish.jpg"])[0]                                       # doctest: +SKIP
>>> e.label, e.map.shape, e.map.max()                                        # doctest: +SKIP
('Dessert', (224, 224), 1.0)

The map is computed on the layer the backbone names (``Body.cam_layer``: the last stage of a CNN, VGG16's
fifth block; a vision transformer's last block, its tokens laid on the patch grid), for the most probable
class unless another is asked, at the model's input size, scaled to [0, 1]. ``METHODS``: Grad-CAM
(gradients averaged per channel), Grad-CAM++ (weighted by their second order: several objects of a
class), LayerCAM (gradients per position: finer maps, from any layer), EigenCAM (the activations'
first principal component: no gradient, class-agnostic).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.errors import ConfigError
from headstart.inference.prediction import EXPLAIN_METHODS
from headstart.models.classifier import Classifier
from headstart.utils.files import check_writable_dir

# One map at a time in a process: the library hooks the target layer and collects every forward pass through it,
# so two requests of a server explaining at once with a ViT (whose target is the model's own layer) mixed their
# activations; and the weights' requires_grad is switched off for the pass, then back on.
_ONE_AT_A_TIME = threading.Lock()
# Each method's class in the grad-cam library.
METHODS = dict(zip(EXPLAIN_METHODS, ("GradCAM", "GradCAMPlusPlus", "LayerCAM", "EigenCAM")))


class _Mapped(nn.Module):
    """The classifier, with the activation maps are computed on as a layer of its own (``target``) when the
    backbone names the output of ``forward_features``: an identity the library can hook."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model
        layer, self.reshape = model.body.cam_layer()
        self.target = layer if layer is not None else nn.Identity()
        self.own_target = layer is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if not self.own_target:
            return m(x)
        return m.head(m.body.pool(self.target(m.body.forward_features(m.normalize(x)))))


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"Unknown explanation method '{method}'. Use one of: {', '.join(METHODS)}.")
    return method


def class_maps(
    model: Classifier, images, method: str = "gradcam", classes: list[int] | None = None, batch_size: int = 16
) -> np.ndarray:
    """(N, size, size) float32 maps in [0, 1] of (size, size, 3) uint8 images at the model's input size: where
    each image shows ``classes[i]`` (default: its most probable class) by ``method`` (``METHODS``)."""
    import pytorch_grad_cam

    cam_class = getattr(pytorch_grad_cam, METHODS[check_method(method)])
    device = next(model.parameters()).device
    mapped = _Mapped(model).eval()
    # Gradients flow to the input, not into the weights: nothing for the weights to hold (or an optimizer to see).
    with _ONE_AT_A_TIME:
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:
            for p in trainable:
                p.requires_grad_(False)
            with torch.inference_mode(False), torch.enable_grad():
                out = _maps(mapped, images, cam_class, classes, batch_size, device)
        finally:
            for p in trainable:
                p.requires_grad_(True)
    size = model.preprocessing.input_size
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, size, size), np.float32)


def _maps(mapped: _Mapped, images, cam_class, classes: list[int] | None, batch_size: int, device) -> list[np.ndarray]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([np.asarray(images[i]) for i in range(start, min(start + batch_size, len(images)))])
        # The library hooks the layer's output gradient: the input asks for one, so frozen layers pass it on.
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255).to(device).requires_grad_(True)
        targets = None
        if classes is not None:
            targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + len(batch)]]
        with cam_class(model=mapped, target_layers=[mapped.target], reshape_transform=mapped.reshape) as cam:
            out.append(cam(input_tensor=x, targets=targets))
    return out


def overlay(image: np.ndarray, cam_map: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """An (H, W, 3) uint8 photo with its map over it (jet colours: red where the class is found)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(np.asarray(image, np.float32) / 255, cam_map, use_rgb=True, image_weight=image_weight)


def write_explanations(explanations, out_dir: Path) -> list[Path]:
    """One PNG per explained image in ``out_dir`` (the photo, its map over it, its top classes), named after the
    image (``-2``, ``-3``... where two share a name); each explanation's ``picture`` says where."""
    from headstart.reporting.plots import plot_explanation  # matplotlib: only when pictures are asked for

    out_dir = check_writable_dir(Path(out_dir), "The explanations folder (--out)")
    written, taken = [], set()
    for e in explanations:
        if e.error is not None:
            continue
        stem = Path(e.source).stem if not e.source.startswith("<") else e.source.strip("<>").replace(" ", "-")
        name, n = f"{stem}-{e.method}", 1
        while name in taken:
            n += 1
            name = f"{stem}-{e.method}-{n}"
        taken.add(name)
        e.picture = str(plot_explanation(e.image, overlay(e.image, e.map), e.top, out_dir / f"{name}.png", e.source))
        written.append(Path(e.picture))
    return written
