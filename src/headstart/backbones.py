"""Backbones: any timm model, VGG16 as in the tutorial, one factory over one contract.

>>> model = create_model("efficientnet_lite0", num_classes=11)   # bundled ImageNet weights
>>> [g.name for g in model.groups][:3]
['stem', 'blocks.0', 'blocks.1']
>>> model.preprocessing.input_size
224

Every model is a ``Classifier``: ``body`` (the pretrained network, pooled to one feature
vector per image; every body honours the contract in ``headstart.body``), ``head`` (the
tutorial's: Dropout(0.2) -> Linear(100) -> ReLU -> Linear(C)), ``groups`` (the body's freezable
parts in input-to-output order: stem, stages, final layers) and ``preprocessing`` (what its
weights expect). It takes RGB floats in [0, 1] and normalises them itself, so a saved model
always gets the inputs it was trained on.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from headstart import weights as W
from headstart.body import BackboneInfo, Body, Group
from headstart.errors import ConfigError, WeightsError
from headstart.keras_numerics import init_head
from headstart.timm_body import TimmBody
from headstart.vgg16 import VGG16Body
from headstart._files import write_atomically
from headstart.weights import Preprocessing

DEFAULT_BACKBONE = "efficientnet_lite0"

REGISTRY: dict[str, BackboneInfo] = {
    info.name: info
    for info in (
        BackboneInfo("efficientnet_lite0", TimmBody, "tf_efficientnet_lite0", "bundled", "tf_efficientnet_lite0.in1k",
                     W.INCEPTION, "bundled ImageNet weights, works offline; the default"),
        BackboneInfo("vgg16", VGG16Body, "vgg16", "hub", "torchvision IMAGENET1K_V1", W.IMAGENET,
                     "the tutorial's network; Keras .h5 weights load with Caffe preprocessing"),
        BackboneInfo("resnet50", TimmBody, "resnet50", "hub", "resnet50.a1_in1k", W.IMAGENET),
        BackboneInfo("mobilenetv3_large_100", TimmBody, "mobilenetv3_large_100", "hub",
                     "mobilenetv3_large_100.ra_in1k", W.IMAGENET),
        BackboneInfo("convnext_tiny", TimmBody, "convnext_tiny", "hub", "convnext_tiny.in12k_ft_in1k", W.IMAGENET),
        BackboneInfo("vit_small_patch16_224", TimmBody, "vit_small_patch16_224", "hub",
                     "vit_small_patch16_224.augreg_in21k_ft_in1k", W.INCEPTION),
    )
}


@dataclass(frozen=True)
class HeadConfig:
    """The classifier on top of the pooled features; the tutorial's by default."""

    dropout: float = 0.2  # the tutorial's Dropout(0.2)
    hidden: int = 100  # its Dense(100, relu); 0 means a single linear layer
    init: str = "torch"  # "keras": Glorot-uniform kernels and zero biases, as its Dense layers start

    def build(self, in_features: int, num_classes: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Dropout(self.dropout)] if self.dropout > 0 else []
        if self.hidden > 0:
            layers += [nn.Linear(in_features, self.hidden), nn.ReLU(inplace=True), nn.Linear(self.hidden, num_classes)]
        else:
            layers.append(nn.Linear(in_features, num_classes))
        return init_head(nn.Sequential(*layers), self.init)


class Classifier(nn.Module):
    """A pretrained body, a new head, its freezable groups and its preprocessing."""

    def __init__(self, body: Body, head: nn.Module, preprocessing: Preprocessing, *, backbone: str, config: dict):
        super().__init__()
        self.frozen_modules: list[nn.Module] = []  # set by headstart.strategies; kept in eval mode
        self.pretrained_bn_stats = False  # True: every BatchNorm of the body uses its running statistics
        self.body = body
        self.head = head
        self.groups = body.groups()
        self.backbone = backbone
        self.num_features = body.num_features
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
        stages = self.body.stages()
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
        raise ConfigError(f"No group '{name}' in {self.backbone}; its groups are: {', '.join(g.name for g in self.groups)}.")


class _Normalized(nn.Module):
    """Normalise as the classifier does, then run some of its stages."""

    def __init__(self, classifier: Classifier, stages: nn.Sequential):
        super().__init__()
        self.stages, self._normalize = stages, classifier.normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self._normalize(x))


class _Rest(nn.Module):
    """The stages after a cut, then the body's pooling."""

    def __init__(self, stages: nn.Sequential, body: Body):
        super().__init__()
        self.stages, self._pool = stages, body.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(self.stages(x))


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)



# --- the factory --------------------------------------------------------------------------


def resolve(backbone: str) -> BackboneInfo:
    """A backbone name, curated or any timm model's, as what builds it and its defaults."""
    import timm

    if backbone in REGISTRY:
        return REGISTRY[backbone]
    if timm.is_model(backbone):
        return BackboneInfo(backbone, TimmBody, backbone, "hub", backbone, W.IMAGENET)
    close = difflib.get_close_matches(backbone, list(REGISTRY) + timm.list_models(), n=3, cutoff=0.6)
    raise ConfigError(
        f"Unknown backbone '{backbone}'. Curated: {', '.join(REGISTRY)}; any timm model name works too"
        + (f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models()).")
        + f" Received: backbone={backbone!r}"
    )


def _weights_source(info: BackboneInfo, weights: str | Path) -> str:
    """"hub", "bundled", "none" or a file's path, from what ``create_model`` was given."""
    source = str(weights)
    if isinstance(weights, str) and weights not in W.WEIGHT_SOURCES and not Path(weights).suffix:
        raise WeightsError(
            f"Unknown weights '{weights}'. Use one of {', '.join(W.WEIGHT_SOURCES)} or a file "
            f"({', '.join(W.FILE_SUFFIXES)}). Received: weights={weights!r}"
        )
    if source == "default":
        return info.default_weights
    if source == "bundled" and info.timm_name != "tf_efficientnet_lite0":
        raise WeightsError(f"Only efficientnet_lite0 has bundled weights. Received: backbone={info.name!r}, weights='bundled'")
    return source


def create_model(
    backbone: str = DEFAULT_BACKBONE,
    num_classes: int = 1000,
    weights: str | Path = "default",
    head: HeadConfig | dict | str | None = None,
    input_size: int | None = None,
) -> Classifier:
    """Build a classifier on a pretrained backbone: resolve the name, build the body, load the
    weights, put a head on top.

    - ``backbone``: a curated name (``headstart backbones`` lists them) or any timm model name.
    - ``weights``: ``"default"`` (bundled for efficientnet_lite0, else hub), ``"bundled"``,
      ``"hub"``, ``"none"`` (random), or a file: ``.pth``/``.pt``/``.safetensors``/Keras ``.h5``.
    - ``head``: ``HeadConfig(dropout, hidden, init)`` or its dict (default: the tutorial's head), or
      ``"pretrained"`` to keep the pretrained ImageNet classifier (``num_classes`` must match).
    - ``input_size``: override the input size the weights were trained at (e.g. 128 on a CPU).

    >>> m = create_model("vgg16", 11, weights="none")
    >>> count_params(m)
    14767099
    """
    info = resolve(backbone)
    source = _weights_source(info, weights)
    if not isinstance(num_classes, int) or num_classes < 2 and head != "pretrained":
        raise ConfigError(f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}")
    if head == "pretrained" and not info.adapter.has_pretrained_head:  # said before any weights are fetched
        raise ConfigError(f"{backbone} has no pretrained classifier to keep (vgg16 here is the convolutional part "
                          "only, as Keras' include_top=False). Use the default head.")

    body = info.adapter.build(info, "none" if source not in W.WEIGHT_SOURCES else source, input_size)
    if source not in W.WEIGHT_SOURCES:
        body.load_file(Path(source))
    preprocessing = body.preprocessing
    if input_size:
        preprocessing = dataclasses.replace(preprocessing, input_size=input_size)

    if head == "pretrained":
        head_module = body.pretrained_head()
        if head_module.out_features != num_classes:
            raise ConfigError(f"The pretrained head has {head_module.out_features} classes. Received: num_classes={num_classes}")
    else:
        head_cfg = HeadConfig(**head) if isinstance(head, dict) else head if isinstance(head, HeadConfig) else HeadConfig()
        head_module = head_cfg.build(body.num_features, num_classes)
    config = {
        "backbone": backbone, "num_classes": num_classes, "weights": str(weights),
        "head": "pretrained" if head == "pretrained" else dataclasses.asdict(head_cfg), "input_size": preprocessing.input_size,
    }
    return Classifier(body, head_module, preprocessing, backbone=backbone, config=config)


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

    meta = {"headstart": json.dumps({"config": model.config, "preprocessing": model.preprocessing.to_dict(),
                                     **(extra or {})})}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return write_atomically(Path(path), lambda f: f.write(save(state, metadata=meta)))


def load_saved_model(path: str | Path) -> tuple[Classifier, dict]:
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
