"""Any timm model as a headstart body: timm's own features, pooling and parameter groups.

>>> body = TimmBody.build(resolve("resnet50"), "none", 224)                   # doctest: +SKIP
>>> [g.name for g in body.groups()]                                           # doctest: +SKIP
['stem', 'layer1', 'layer2', 'layer3', 'layer4']
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from headstart.data.preprocessing import Preprocessing
from headstart.errors import ConfigError, WeightsError
from headstart.models.backbone import BackboneInfo, Body, Group
from headstart.models.weights import bundled_efficientnet_lite0, check_hub, hub_error, load_into, read_state_dict


class TimmBody(Body):
    """A timm model without its classifier: features, then timm's own pooling for the architecture."""

    def __init__(self, net: nn.Module, preprocessing: Preprocessing, imagenet_head: nn.Module | None = None):
        super().__init__()
        self.net, self.preprocessing = net, preprocessing
        # head_hidden_size: what pre_logits returns when a model has layers after pooling (MobileNetV3)
        self.num_features = getattr(net, "head_hidden_size", None) or net.num_features
        # In a tuple, not as an attribute: the ImageNet classifier is not part of the body's parameters.
        self._imagenet_head = (imagenet_head,)

    @classmethod
    def build(cls, info: BackboneInfo, source: str, input_size: int | None) -> "TimmBody":
        hub = source == "hub"
        net = _make_timm(info.hub_tag if hub else info.timm_name, hub, input_size)
        preprocessing = _timm_preprocessing(net) if hub else info.preprocessing
        if source == "bundled":
            load_into(net, bundled_efficientnet_lite0(), "the bundled EfficientNet-Lite0 weights")
        # Random with "none": rebuilding a saved model with a pretrained head fills it from the file.
        imagenet_head = net.get_classifier()
        net.reset_classifier(0)  # a new Identity; the classifier object held here keeps its weights
        return cls(net, preprocessing, imagenet_head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(x, pre_logits=True)

    def groups(self) -> list[Group]:
        return _timm_groups(self.net)

    def load_file(self, path: Path) -> None:
        if path.suffix.lower() in (".h5", ".hdf5"):
            raise WeightsError(f"Keras .h5 weights are supported for vgg16; received {path} for a timm model.")
        load_into(self.net, read_state_dict(path), str(path))
        self._imagenet_head = (None,)  # the file's classifier, if any, is not loaded: there is none to keep

    def pretrained_head(self) -> nn.Module:
        head = self._imagenet_head[0]
        if head is None or isinstance(head, nn.Identity):
            raise ConfigError("This backbone's weights come without a pretrained classifier. Use the default head.")
        return head

    def cam_layer(self) -> tuple[nn.Module | None, Callable | None]:
        """CNNs: the last stage (the default). Vision transformers: the input norm of the last block, with its
        tokens laid out on the patch grid. Not their final output: a class-token ViT pools the class token alone,
        so no gradient reaches the patch tokens there (the grad-cam library's advice for ViTs)."""
        prefix = getattr(self.net, "num_prefix_tokens", None)
        if prefix is not None and hasattr(self.net, "blocks"):
            return self.net.blocks[-1].norm1, partial(tokens_to_grid, prefix=prefix)
        return None, None

    def stages(self) -> list[tuple[str, nn.Module]] | None:
        """``forward_features`` as consecutive stages named like the groups, for the architectures
        whose forward is a plain sequence (others return None and are never cut)."""
        net, kind = self.net, type(self.net).__name__
        if kind in ("EfficientNet", "MobileNetV3"):
            out = [("stem", nn.Sequential(net.conv_stem, net.bn1))]
            out += [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
            if kind == "EfficientNet":  # MobileNetV3's conv_head comes after pooling, in forward_head
                out.append(("final", nn.Sequential(net.conv_head, net.bn2)))
            return out
        if kind == "ResNet":
            out = [("stem", nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool))]
            return out + [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]
        if kind == "ConvNeXt":
            out = [("stem", net.stem)] + [(f"stages.{i}", st) for i, st in enumerate(net.stages)]
            return out + [("norm_pre", net.norm_pre)]
        return None


def tokens_to_grid(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """A transformer's (N, prefix + h*w, C) tokens as a (N, C, h, w) map: the class (and register) tokens
    dropped, the patch tokens on their square grid."""
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def _timm_groups(net: nn.Module) -> list[Group]:
    """Freezable groups from timm's own ``group_matcher``: stem, each stage or block, final layers.

    timm merges the final convolution or norm into the last block (its MATCH_PREV_GROUP marker);
    here they are a group of their own, so "all but the final layers" can be said.
    """
    from timm.models import group_parameters

    matcher = dict(net.group_matcher(coarse=True))
    final = []
    for key, spec in list(matcher.items()):
        if isinstance(spec, (list, tuple)):
            keep = [s for s in spec if not (s[1] is not None and s[1][0] == 99999)]
            final += [s[0] for s in spec if s not in keep]
            matcher[key] = keep
    if final:
        matcher["final"] = "|".join(f"(?:{r})" for r in final)
    regexes = {
        k: re.compile(v if isinstance(v, str) else "|".join(f"(?:{s[0]})" for s in v)) for k, v in matcher.items() if v
    }
    params, modules = dict(net.named_parameters()), dict(net.named_modules())
    groups = []
    for _, names in sorted(group_parameters(net, matcher).items()):
        first = names[0]
        label = next((k for k, r in regexes.items() if r.match(first)), None)
        if label in ("stem", "final"):
            title = label
        elif label is not None:  # "blocks.3", "layer2", "stages.1": the matched prefix
            title = regexes[label].match(first).group(0)
            title = title if re.search(r"\d", title) else first.split(".")[0]
        else:
            title = "final"  # not matched, so last: e.g. ConvNeXt's head.norm, MobileNetV3's conv_head
        groups.append(_group(title, params, modules, names))
    return groups


def _group(name: str, params: dict[str, nn.Parameter], modules: dict[str, nn.Module], param_names: list[str]) -> Group:
    owners = dict.fromkeys(n.rsplit(".", 1)[0] for n in param_names if "." in n)
    return Group(name, [params[n] for n in param_names], [modules[o] for o in owners])


def _make_timm(name: str, pretrained: bool, input_size: int | None) -> nn.Module:
    """A timm model; ``name`` may carry a weights tag (``resnet50.a1_in1k``) when pretrained."""
    import timm

    kwargs = {"pretrained": pretrained}
    if pretrained and not _hub_cached(name):
        from urllib.parse import urlparse

        from huggingface_hub import constants

        check_hub(name, urlparse(constants.ENDPOINT).hostname or "huggingface.co")  # HF_ENDPOINT: a mirror
    try:
        if input_size:
            try:  # ViTs are built for one input size (timm resamples pretrained position embeddings)
                return timm.create_model(name, img_size=input_size, **kwargs)
            except TypeError:  # CNNs take any size and have no img_size argument
                pass
        return timm.create_model(name, **kwargs)
    except Exception as e:
        if not pretrained:
            raise ConfigError(f"timm cannot build '{name}': {e}") from None
        raise hub_error(name, e) from None


def _hub_cached(name: str) -> bool:
    """Whether timm's weights for ``name`` were downloaded before (the hub's cache can answer offline)."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    return bool(repo) and any(
        isinstance(try_to_load_from_cache(repo, f), str)
        for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    )


def _timm_preprocessing(net: nn.Module) -> Preprocessing:
    cfg = net.pretrained_cfg
    return Preprocessing(
        input_size=cfg["input_size"][-1],
        interpolation=cfg.get("interpolation", "bilinear"),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
    )
