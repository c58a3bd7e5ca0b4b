"""Backbones: any timm model, VGG16 as in the tutorial, one factory and one contract.

>>> model = create_model("efficientnet_lite0", num_classes=11)   # bundled ImageNet weights
>>> [g.name for g in model.groups][:3]
['stem', 'blocks.0', 'blocks.1']
>>> model.preprocessing.input_size
224

Every model is a ``Classifier``: ``body`` (the pretrained network, pooled to one feature
vector per image), ``head`` (the tutorial's: Dropout(0.2) -> Linear(100) -> ReLU -> Linear(C)),
``groups`` (the body's freezable parts in input-to-output order: stem, stages, final layers)
and ``preprocessing`` (what its weights expect). It takes RGB floats in [0, 1] and normalises
them itself, so a saved model always gets the inputs it was trained on.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from headstart import weights as W
from headstart.weights import Preprocessing, WeightsError

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class BackboneInfo:
    """A curated backbone: the timm architecture under it and its tested defaults."""

    name: str
    timm_name: str
    default_weights: str  # "bundled" or "hub"
    hub_tag: str  # the timm (or torchvision) weights fetched for "hub"
    preprocessing: Preprocessing  # what those default weights expect
    note: str = ""


REGISTRY: dict[str, BackboneInfo] = {
    info.name: info
    for info in (
        BackboneInfo("efficientnet_lite0", "tf_efficientnet_lite0", "bundled", "tf_efficientnet_lite0.in1k",
                     W.INCEPTION, "bundled ImageNet weights, works offline; the default"),
        BackboneInfo("vgg16", "vgg16", "hub", "torchvision IMAGENET1K_V1", W.IMAGENET,
                     "the tutorial's network; Keras .h5 weights load with Caffe preprocessing"),
        BackboneInfo("resnet50", "resnet50", "hub", "resnet50.a1_in1k", W.IMAGENET),
        BackboneInfo("mobilenetv3_large_100", "mobilenetv3_large_100", "hub", "mobilenetv3_large_100.ra_in1k",
                     W.IMAGENET),
        BackboneInfo("convnext_tiny", "convnext_tiny", "hub", "convnext_tiny.in12k_ft_in1k", W.IMAGENET),
        BackboneInfo("vit_small_patch16_224", "vit_small_patch16_224", "hub",
                     "vit_small_patch16_224.augreg_in21k_ft_in1k", W.INCEPTION),
    )
}


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


def _group(name: str, params: dict[str, nn.Parameter], modules: dict[str, nn.Module], param_names: list[str]) -> Group:
    owners = dict.fromkeys(n.rsplit(".", 1)[0] for n in param_names if "." in n)
    return Group(name, [params[n] for n in param_names], [modules[o] for o in owners])


@dataclass(frozen=True)
class HeadConfig:
    """The classifier on top of the pooled features; the tutorial's by default."""

    dropout: float = 0.2  # the tutorial's Dropout(0.2)
    hidden: int = 100  # its Dense(100, relu); 0 means a single linear layer

    def build(self, in_features: int, num_classes: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Dropout(self.dropout)] if self.dropout > 0 else []
        if self.hidden > 0:
            layers += [nn.Linear(in_features, self.hidden), nn.ReLU(inplace=True), nn.Linear(self.hidden, num_classes)]
        else:
            layers.append(nn.Linear(in_features, num_classes))
        return nn.Sequential(*layers)


class Classifier(nn.Module):
    """A pretrained body, a new head, its freezable groups and its preprocessing."""

    def __init__(self, body: nn.Module, head: nn.Module, groups: list[Group], preprocessing: Preprocessing,
                 *, backbone: str, num_features: int, config: dict):
        super().__init__()
        self.frozen_modules: list[nn.Module] = []  # set by headstart.strategies; kept in eval mode
        self.pretrained_bn_stats = False  # True: every BatchNorm of the body uses its running statistics
        self.body = body
        self.head = head
        self.groups = groups
        self.backbone = backbone
        self.num_features = num_features
        self.config = config  # everything create_model needs to build this model again
        self.set_preprocessing(preprocessing)

    def set_preprocessing(self, preprocessing: Preprocessing) -> None:
        """Use the input preprocessing of the weights loaded into the body."""
        self.preprocessing = preprocessing
        # Buffers, so they move with .to(device); not persistent: preprocessing is saved as data.
        order = ["RGB".index(c) for c in preprocessing.channels]
        self.register_buffer("channel_order", torch.tensor(order), persistent=False)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Classifier":
        """As ``nn.Module.train``, but frozen layers stay in eval mode: a frozen BatchNorm's running
        statistics never move (Keras does the same for layers with ``trainable = False``). With
        ``pretrained_bn_stats`` every BatchNorm of the body normalises with its pretrained statistics
        while its weights train (Keras' advice for fine-tuning on small data)."""
        super().train(mode)
        for m in self.frozen_modules:
            m.eval()
        if self.pretrained_bn_stats:
            for m in self.body.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> what the body's weights expect (channel order, mean, std)."""
        if self.preprocessing.channels != "RGB":
            x = x[:, self.channel_order]
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, one vector of ``num_features`` per image."""
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def split(self, k: int) -> tuple[nn.Module, nn.Module] | None:
        """The forward pass cut after the first ``k`` groups: ``(prefix, rest)`` with
        ``rest(prefix(x)) == forward_features(x)``, or None when this architecture cannot be cut there.

        With the first k groups frozen (and no augmentation) the prefix's output never changes, so
        it is computed once and only ``rest`` runs every epoch.
        """
        stages = self.body.stages() if hasattr(self.body, "stages") else None
        if not stages or not 0 < k <= len(self.groups):
            return None
        names = [name for name, _ in stages]
        if names[:k] != [g.name for g in self.groups[:k]]:
            return None
        prefix = _Normalized(self, nn.Sequential(*[m for _, m in stages[:k]]))
        return prefix, _Rest(nn.Sequential(*[m for _, m in stages[k:]]), self.body)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise ValueError(f"No group '{name}' in {self.backbone}; its groups are: {', '.join(g.name for g in self.groups)}.")


class _Normalized(nn.Module):
    """Normalise as the classifier does, then run some of its stages."""

    def __init__(self, classifier: Classifier, stages: nn.Sequential):
        super().__init__()
        self.stages, self._normalize = stages, classifier.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self._normalize(x))


class _Rest(nn.Module):
    """The stages after a cut, then the body's pooling (timm's forward_head, or VGG16's average)."""

    def __init__(self, stages: nn.Sequential, body: nn.Module):
        super().__init__()
        self.stages, self._pool = stages, body.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self.stages(x))


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --- timm backbones -----------------------------------------------------------------------


class TimmBody(nn.Module):
    """A timm model without its classifier: features, then timm's own pooling for the architecture."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.forward_features(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(x, pre_logits=True)

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
    regexes = {k: re.compile(v if isinstance(v, str) else "|".join(f"(?:{s[0]})" for s in v))
               for k, v in matcher.items() if v}
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


def _make_timm(name: str, pretrained: bool, input_size: int | None) -> nn.Module:
    """A timm model; ``name`` may carry a weights tag (``resnet50.a1_in1k``) when pretrained."""
    import timm

    kwargs = {"pretrained": pretrained}
    try:
        if input_size:
            try:  # ViTs are built for one input size (timm resamples pretrained position embeddings)
                return timm.create_model(name, img_size=input_size, **kwargs)
            except TypeError:  # CNNs take any size and have no img_size argument
                pass
        return timm.create_model(name, **kwargs)
    except Exception as e:
        if not pretrained:
            raise ValueError(f"timm cannot build '{name}': {e}") from None
        raise W.hub_error(name, e) from None


# --- VGG16, as Keras names it ------------------------------------------------------------

# Keras' VGG16(include_top=False) layers in order; the tutorial freezes ``layers[:-9]``.
VGG16_KERAS_LAYERS = (
    "input_1",
    "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
)


class VGG16Body(nn.Module):
    """VGG16's 13 convolutions (torchvision's layout), then global average pooling.

    ``keras_layers`` lists the 19 layers of Keras' ``VGG16(include_top=False)`` with the module
    each one is here (None for the input layer), so ``--freeze-layers 10`` means what it does in Keras.
    """

    def __init__(self):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"], batch_norm=False)
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        pools = [m for m in self.features if isinstance(m, nn.MaxPool2d)]
        self.keras_layers: list[tuple[str, nn.Module | None]] = []
        for name in VGG16_KERAS_LAYERS:
            module = None if name == "input_1" else pools.pop(0) if name.endswith("pool") else convs.pop(0)
            self.keras_layers.append((name, module))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # Keras' GlobalAveragePooling2D

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


# --- the factory --------------------------------------------------------------------------


def _resolve(backbone: str) -> tuple[str, BackboneInfo | None]:
    """The timm architecture for a backbone name (curated or any timm name)."""
    import timm

    if backbone in REGISTRY:
        return REGISTRY[backbone].timm_name, REGISTRY[backbone]
    if timm.is_model(backbone):
        return backbone, None
    close = difflib.get_close_matches(backbone, list(REGISTRY) + timm.list_models(), n=3, cutoff=0.6)
    raise ValueError(
        f"Unknown backbone '{backbone}'. Curated: {', '.join(REGISTRY)}; any timm model name works too"
        + (f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models()).")
        + f" Received: backbone={backbone!r}"
    )


def _vgg16_hub_state(backbone: str) -> dict:
    """torchvision's ImageNet VGG16 weights (the convolutional part), downloaded when online."""
    try:
        from torchvision.models import VGG16_Weights

        state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as e:  # offline: urllib raises many kinds
        raise W.hub_error(backbone, e) from None
    return {k: v for k, v in state.items() if k.startswith("features.")}


def _timm_preprocessing(net: nn.Module) -> Preprocessing:
    cfg = net.pretrained_cfg
    return Preprocessing(input_size=cfg["input_size"][-1], interpolation=cfg.get("interpolation", "bilinear"),
                         mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def create_model(
    backbone: str = DEFAULT_BACKBONE,
    num_classes: int = 1000,
    weights: str | Path = "default",
    head: HeadConfig | dict | str | None = None,
    input_size: int | None = None,
) -> Classifier:
    """Build a classifier on a pretrained backbone.

    - ``backbone``: a curated name (``headstart backbones`` lists them) or any timm model name.
    - ``weights``: ``"default"`` (bundled for efficientnet_lite0, else hub), ``"bundled"``,
      ``"hub"``, ``"none"`` (random), or a file: ``.pth``/``.pt``/``.safetensors``/Keras ``.h5``.
    - ``head``: ``HeadConfig(dropout, hidden)`` or its dict (default: the tutorial's head), or
      ``"pretrained"`` to keep the pretrained ImageNet classifier (``num_classes`` must match).
    - ``input_size``: override the input size the weights were trained at (e.g. 128 on a CPU).

    >>> m = create_model("vgg16", 11, weights="none")
    >>> count_params(m)
    14767099
    """
    timm_name, info = _resolve(backbone)
    if isinstance(weights, str) and weights not in W.WEIGHT_SOURCES and not Path(weights).suffix:
        raise WeightsError(
            f"Unknown weights '{weights}'. Use one of {', '.join(W.WEIGHT_SOURCES)} or a file "
            f"({', '.join(W.FILE_SUFFIXES)}). Received: weights={weights!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 2 and head != "pretrained":
        raise ValueError(f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}")
    source = str(weights)
    if source == "default":
        source = info.default_weights if info else "hub"
    if source == "bundled" and timm_name != "tf_efficientnet_lite0":
        raise WeightsError(f"Only efficientnet_lite0 has bundled weights. Received: backbone={backbone!r}, weights='bundled'")

    keep_classifier = head == "pretrained"
    preprocessing = info.preprocessing if info else W.IMAGENET
    if timm_name == "vgg16":
        if keep_classifier:
            raise ValueError("vgg16 here is the convolutional part only (Keras include_top=False); it has no pretrained head.")
        body: nn.Module = VGG16Body()
        target, num_features, classifier = body, 512, None
        if source == "hub":
            W.load_into(body, _vgg16_hub_state(backbone), f"torchvision's ImageNet weights of {backbone}")
    else:
        hub = source == "hub"
        net = _make_timm((info.hub_tag if info else timm_name) if hub else timm_name, hub, input_size)
        if hub:
            preprocessing = _timm_preprocessing(net)
        if source == "bundled":
            W.load_into(net, W.bundled_efficientnet_lite0(), "the bundled EfficientNet-Lite0 weights")
            preprocessing = W.INCEPTION
        classifier = net.get_classifier() if keep_classifier else None
        net.reset_classifier(0)  # keeps the classifier object we hold, with its weights
        body = TimmBody(net)
        target = net
        # head_hidden_size: what pre_logits returns when a model has layers after pooling (MobileNetV3)
        num_features = getattr(net, "head_hidden_size", None) or net.num_features

    if source not in W.WEIGHT_SOURCES:
        path = Path(source)
        if path.suffix.lower() in (".h5", ".hdf5"):
            if not isinstance(body, VGG16Body):
                raise WeightsError(f"Keras .h5 weights are supported for vgg16; received them for '{backbone}'.")
            if not path.is_file():
                raise WeightsError(f"Weights file '{path}' does not exist.")
            W.load_into(body, body.keras_state_dict(W.read_keras_h5(path)), str(path))
            preprocessing = W.CAFFE  # Keras' VGG16 weights are Caffe's: BGR, mean subtracted, 0-255
        else:
            W.load_into(target, W.read_state_dict(path), str(path))
    if input_size:
        preprocessing = dataclasses.replace(preprocessing, input_size=input_size)
    groups = body.groups() if isinstance(body, VGG16Body) else _timm_groups(body.net)

    head_cfg = HeadConfig(**head) if isinstance(head, dict) else head if isinstance(head, HeadConfig) else HeadConfig()
    head_module = classifier if keep_classifier else head_cfg.build(num_features, num_classes)
    if keep_classifier and head_module.out_features != num_classes:
        raise ValueError(f"The pretrained head has {head_module.out_features} classes. Received: num_classes={num_classes}")
    config = {
        "backbone": backbone, "num_classes": num_classes, "weights": str(weights),
        "head": "pretrained" if keep_classifier else head_cfg.__dict__, "input_size": preprocessing.input_size,
    }
    return Classifier(body, head_module, groups, preprocessing, backbone=backbone, num_features=num_features, config=config)


def list_backbones() -> list[dict]:
    """The curated backbones: name, parameters (without head), input size, where weights come from."""
    rows = []
    for info in REGISTRY.values():
        with torch.device("meta"):  # count parameters without allocating them
            model = create_model(info.name, 2, weights="none", head={"dropout": 0.0, "hidden": 0})
        rows.append({
            "name": info.name,
            "timm": info.timm_name,
            "params": count_params(model.body),
            "groups": len(model.groups),
            "input_size": info.preprocessing.input_size,
            "weights": "bundled (offline)" if info.default_weights == "bundled" else "hub",
            "note": info.note,
        })
    return rows


# --- saving and loading, preprocessing included --------------------------------------------


def save_model(model: Classifier, path: str | Path, extra: dict | None = None) -> Path:
    """Write the weights and everything needed to rebuild the model (config, preprocessing,
    ``extra`` such as class names) to one ``.safetensors`` file."""
    import json

    from safetensors.torch import save

    from headstart._files import write_atomically

    meta = {"headstart": json.dumps({"config": model.config, "preprocessing": model.preprocessing.to_dict(),
                                     **(extra or {})})}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return write_atomically(Path(path), lambda f: f.write(save(state, metadata=meta)))


def load_model(path: str | Path) -> tuple[Classifier, dict]:
    """A model written by ``save_model``, with the preprocessing it was trained with, and its extras."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("headstart", "null") or "null")
    if not meta:
        raise WeightsError(f"{path} was not written by headstart (no 'headstart' metadata).")
    model = rebuild_model(meta.pop("config"), load_file(str(path)), meta.pop("preprocessing"))
    return model, meta


def rebuild_model(config: dict, state: dict, preprocessing: dict) -> Classifier:
    """A model as ``create_model(**config)`` built it, with saved weights and preprocessing."""
    model = create_model(**{**config, "weights": "none"})  # the saved tensors replace the weights
    model.load_state_dict(state)
    model.set_preprocessing(Preprocessing.from_dict(preprocessing))
    return model
