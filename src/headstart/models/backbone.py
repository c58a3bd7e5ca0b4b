"""The backbone contract: what every pretrained body answers, whatever its architecture.

A body turns images (already normalised) into one feature vector per image. Like timm's models,
every body answers the same few questions, so nothing above it asks what type it is:

- ``forward_features(x)`` / ``pool(x)``: the feature map, and the pooling that makes it a vector
  (``forward`` is both); ``num_features`` is the vector's width;
- ``groups()``: its freezable parts, input to output, with names a user can say;
- ``stages()``: ``forward_features`` as consecutive stages named like the groups they hold, so the
  forward pass can be cut after a group; None where the architecture is not a plain sequence (a ViT);
- ``layers()``: Keras-style layers for ``--freeze-layers``; None where they mean nothing;
- ``preprocessing``: what the loaded weights expect; ``load_file(path)`` loads weights from a file;
- ``pretrained_head()``: the ImageNet classifier its weights came with, where there is one;
- ``cam_layer()``: the layer a class-activation map is computed on, and how its output becomes a
  (N, C, H, W) map (``headstart.inference.explain``).

The adapters: ``headstart.models.timm_backbones`` (any timm model) and ``headstart.models.vgg16`` (the tutorial's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from headstart.data.preprocessing import Preprocessing
from headstart.errors import ConfigError


@dataclass
class Group:
    """A freezable part of a backbone: a name a user can say, its parameters and its modules.

    ``modules`` are the layers that own the parameters (their BatchNorm statistics freeze with
    them); a parameter owned by the model itself, such as a ViT's ``pos_embed``, is in
    ``params`` only.
    """

    name: str
    params: list[nn.Parameter] = field(default_factory=list)
    modules: list[nn.Module] = field(default_factory=list)

    def parameters(self):
        return iter(self.params)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)


class Body(nn.Module):
    """A pretrained network without its classifier; subclasses implement the contract above."""

    num_features: int
    preprocessing: Preprocessing
    has_pretrained_head = True  # whether pretrained_head() can give the classifier its weights came with

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

    def groups(self) -> list[Group]:
        raise NotImplementedError

    def stages(self) -> list[tuple[str, nn.Module]] | None:
        return None

    def layers(self) -> list[tuple[str, nn.Module | None]] | None:
        return None

    def load_file(self, path: Path) -> None:
        raise NotImplementedError

    def pretrained_head(self) -> nn.Module:
        raise ConfigError(f"{type(self).__name__} has no pretrained classifier to keep.")

    def cam_layer(self) -> tuple[nn.Module | None, Callable | None]:
        """The layer class-activation maps are computed on, and the reshape of its output to (N, C, H, W)
        (None: it is one already). The default, (None, None), is the last stage: the feature map
        ``forward_features`` returns, the one pooling sees."""
        return None, None

    @classmethod
    def build(cls, info: "BackboneInfo", source: str, input_size: int | None) -> "Body":
        """The body of ``info`` with weights from ``source``: "hub", "bundled" or "none" (random).
        A weights file is loaded afterwards, with ``load_file``."""
        raise NotImplementedError


@dataclass(frozen=True)
class BackboneInfo:
    """A backbone by name: the adapter that builds it, the architecture under it, its defaults."""

    name: str
    adapter: type[Body]  # TimmBody or VGG16Body
    timm_name: str  # the architecture
    default_weights: str  # "bundled" or "hub"
    hub_tag: str  # the timm (or torchvision) weights fetched for "hub"
    preprocessing: Preprocessing  # what those default weights expect
    note: str = ""
