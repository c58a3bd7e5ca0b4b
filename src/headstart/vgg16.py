"""VGG16 as the tutorial uses it: Keras' ``VGG16(include_top=False)``, its layer names, its weights.

>>> body = VGG16Body.build(resolve("vgg16"), "none", None)                    # doctest: +SKIP
>>> [name for name, _ in body.layers()][:4]                                   # doctest: +SKIP
['input_1', 'block1_conv1', 'block1_conv2', 'block1_pool']
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from headstart import weights as W
from headstart.body import BackboneInfo, Body, Group
from headstart.errors import WeightsError

log = logging.getLogger(__name__)

# Keras' VGG16(include_top=False) layers in order; the tutorial freezes ``layers[:-9]``.
VGG16_KERAS_LAYERS = (
    "input_1",
    "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
)


class VGG16Body(Body):
    """VGG16's 13 convolutions (torchvision's layout), then global average pooling.

    ``keras_layers`` lists the 19 layers of Keras' ``VGG16(include_top=False)`` with the module
    each one is here (None for the input layer), so ``--freeze-layers 10`` means what it does in Keras.
    """

    has_pretrained_head = False  # the convolutional part only, as Keras' include_top=False

    def __init__(self, preprocessing: W.Preprocessing = W.IMAGENET):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.num_features, self.preprocessing = 512, preprocessing
        self.features = make_layers(cfgs["D"], batch_norm=False)
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        pools = [m for m in self.features if isinstance(m, nn.MaxPool2d)]
        self.keras_layers: list[tuple[str, nn.Module | None]] = []
        for name in VGG16_KERAS_LAYERS:
            module = None if name == "input_1" else pools.pop(0) if name.endswith("pool") else convs.pop(0)
            self.keras_layers.append((name, module))

    @classmethod
    def build(cls, info: BackboneInfo, source: str, input_size: int | None) -> "VGG16Body":
        body = cls(info.preprocessing)
        if source == "hub":
            W.load_into(body, _vgg16_hub_state(info.name), f"torchvision's ImageNet weights of {info.name}")
        return body

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # Keras' GlobalAveragePooling2D

    def layers(self) -> list[tuple[str, nn.Module | None]]:
        return self.keras_layers

    def load_file(self, path: Path) -> None:
        if path.suffix.lower() in (".h5", ".hdf5"):
            if not path.is_file():
                raise WeightsError(f"Weights file '{path}' does not exist.")
            W.load_into(self, self.keras_state_dict(W.read_keras_h5(path)), str(path))
            self.preprocessing = W.CAFFE  # Keras' VGG16 weights are Caffe's: BGR, mean subtracted, 0-255
        else:
            W.load_into(self, W.read_state_dict(path), str(path))

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The five blocks, each its convolutions and its pooling."""
        ends = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        starts = [0] + [e + 1 for e in ends[:-1]]
        return [(f"block{b + 1}", self.features[a:e + 1]) for b, (a, e) in enumerate(zip(starts, ends))]

    def groups(self) -> list[Group]:
        groups = []
        for b in range(1, 6):
            convs = [m for n, m in self.keras_layers if n.startswith(f"block{b}_conv")]
            groups.append(Group(f"block{b}", [p for m in convs for p in m.parameters()], convs))
        return groups

    def keras_state_dict(self, keras: dict) -> dict[str, torch.Tensor]:
        """Keras kernels (height, width, in, out) as PyTorch's (out, in, height, width)."""
        out = {}
        index = {m: i for i, m in enumerate(self.features)}
        for name, module in self.keras_layers:
            if isinstance(module, nn.Conv2d) and f"{name}/kernel" in keras:
                i = index[module]
                out[f"features.{i}.weight"] = torch.from_numpy(keras[f"{name}/kernel"].transpose(3, 2, 0, 1).copy())
                out[f"features.{i}.bias"] = torch.from_numpy(keras[f"{name}/bias"].copy())
        unknown = sorted({k.split("/")[0] for k in keras} - set(VGG16_KERAS_LAYERS))
        if unknown:
            log.warning("Keras layers not in VGG16's convolutional part, ignored: %s", ", ".join(unknown))
        return out


def _vgg16_hub_state(backbone: str) -> dict:
    """torchvision's ImageNet VGG16 weights (the convolutional part), downloaded when online."""
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    if not (Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name).is_file():  # else: downloaded before
        W.check_hub(backbone, "download.pytorch.org")
    try:
        state = weights.get_state_dict(progress=True)
    except Exception as e:  # offline: urllib raises many kinds
        raise W.hub_error(backbone, e) from None
    return {k: v for k, v in state.items() if k.startswith("features.")}
