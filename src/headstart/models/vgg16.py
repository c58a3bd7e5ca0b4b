"""VGG16 as the tutorial uses it: Keras' ``VGG16(include_top=False)``, its layer names, its weights.

>>> body = VGG16Body.build(resolve("vgg16"), "none", None)                    # doctest: +SKIP
>>> [name for name, _ in body.layers()][:4]                                   # doctest: +SKIP
['input_1', 'block1_conv1', 'block1_conv2', 'block1_pool']
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.data.preprocessing import CAFFE, IMAGENET, Preprocessing
from headstart.errors import WeightsError
from headstart.models.backbone import BackboneInfo, Body, Group
from headstart.models.keras_h5 import read_keras_h5
from headstart.models.weights import check_hub, hub_error, load_into, read_state_dict

log = logging.getLogger(__name__)

# Keras' VGG16(include_top=False) layers in order; the tutorial freezes ``layers[:-9]``.
VGG16_KERAS_LAYERS = (
    "input_1",
    "block1_conv1",
    "block1_conv2",
    "block1_pool",
    "block2_conv1",
    "block2_conv2",
    "block2_pool",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block3_pool",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block4_pool",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
    "block5_pool",
)


class VGG16Body(Body):
    """VGG16's 13 convolutions (torchvision's layout), then global average pooling.

    ``keras_layers`` lists the 19 layers of Keras' ``VGG16(include_top=False)`` with the module
    each one is here (None for the input layer), so ``--freeze-layers 10`` means what it does in Keras.
    """

    has_pretrained_head = False  # the convolutional part only, as Keras' include_top=False

    def __init__(self, preprocessing: Preprocessing = IMAGENET):
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
            load_into(body, _vgg16_hub_state(info.name), f"torchvision's ImageNet weights of {info.name}")
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
            load_into(self, self.keras_state_dict(read_keras_h5(path), str(path)), str(path))
            self.preprocessing = CAFFE  # Keras' VGG16 weights are Caffe's: BGR, mean subtracted, 0-255
        else:
            load_into(self, read_state_dict(path), str(path))

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The five blocks, each its convolutions and its pooling."""
        ends = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        starts = [0] + [e + 1 for e in ends[:-1]]
        return [(f"block{b + 1}", self.features[a : e + 1]) for b, (a, e) in enumerate(zip(starts, ends))]

    def groups(self) -> list[Group]:
        groups = []
        for b in range(1, 6):
            convs = [m for n, m in self.keras_layers if n.startswith(f"block{b}_conv")]
            groups.append(Group(f"block{b}", [p for m in convs for p in m.parameters()], convs))
        return groups

    def keras_state_dict(self, keras: dict, source: str = "the Keras file") -> dict[str, torch.Tensor]:
        """``read_keras_h5``'s arrays as this model's state dict, every shape checked: Keras kernels
        (height, width, in, out) become PyTorch's (out, in, height, width).

        The convolutions are found by Keras' layer names (``block1_conv1`` ...); a file without any
        of them (a VGG16 built layer by layer, ``conv2d_1`` ...) gives its 13 convolutions in the
        file's layer order, when it has exactly 13 and every shape fits.
        """
        convs = [(name, m) for name, m in self.keras_layers if isinstance(m, nn.Conv2d)]
        layers = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in keras))  # the file's layer order
        named = [(name, m, name) for name, m in convs if name in layers]
        if named:
            pairs = named
        else:
            kernels = [layer for layer in layers if getattr(keras.get(f"{layer}/kernel"), "ndim", 0) == 4]
            if len(kernels) != len(convs):
                raise WeightsError(
                    f"{source}: none of VGG16's convolution layers ({convs[0][0]} ... {convs[-1][0]}) are in it, "
                    f"and it holds {len(kernels)} convolution kernels, not {len(convs)}. Its layers with weights: "
                    f"{', '.join(layers[:8]) or 'none'}{' ...' if len(layers) > 8 else ''}. These weights are not "
                    "Keras' VGG16 (pick the matching --backbone), or the file is not a Keras weights file."
                )
            pairs = [(name, m, layer) for (name, m), layer in zip(convs, kernels)]
            log.warning(
                "%s: no Keras VGG16 layer names; its convolutions %s ... %s taken in order as "
                "block1_conv1 ... block5_conv3.",
                source,
                kernels[0],
                kernels[-1],
            )
        out = {}
        index = {m: i for i, m in enumerate(self.features)}
        for name, module, layer in pairs:
            kernel, bias = keras.get(f"{layer}/kernel"), keras.get(f"{layer}/bias")
            if kernel is None or bias is None:
                have = sorted(k.rsplit("/", 1)[1] for k in keras if k.rsplit("/", 1)[0] == layer)
                raise WeightsError(
                    f"{source}: layer '{layer}' needs a kernel and a bias; it has {', '.join(have) or 'no weights'}."
                )
            want = tuple(module.weight.shape[d] for d in (2, 3, 1, 0))  # (height, width, in, out)
            if tuple(kernel.shape) != want or tuple(bias.shape) != (module.out_channels,):
                hint = ""
                if tuple(kernel.shape) == tuple(module.weight.shape):
                    hint = (
                        " The kernel is in Theano's order (out, in, height, width): use the "
                        "'tf_dim_ordering_tf_kernels' file."
                    )
                raise WeightsError(
                    f"{source}: layer '{layer}' has a kernel of shape {tuple(kernel.shape)} and a bias of shape "
                    f"{tuple(bias.shape)}, but VGG16's {name} needs {want} (height, width, in, out) and "
                    f"({module.out_channels},).{hint} These weights are for another architecture; pick the "
                    "matching --backbone."
                )
            i = index[module]
            out[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            out[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
        used = {layer for _, _, layer in pairs}
        unknown = [layer for layer in layers if layer not in used and layer not in VGG16_KERAS_LAYERS]
        if unknown:
            log.warning("Keras layers not in VGG16's convolutional part, ignored: %s", ", ".join(unknown))
        return out


def _vgg16_hub_state(backbone: str) -> dict:
    """torchvision's ImageNet VGG16 weights (the convolutional part), downloaded when online."""
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    if not (Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name).is_file():  # else: downloaded before
        check_hub(backbone, "download.pytorch.org")
    try:
        state = weights.get_state_dict(progress=True)
    except Exception as e:  # offline: urllib raises many kinds
        raise hub_error(backbone, e) from None
    return {k: v for k, v in state.items() if k.startswith("features.")}
