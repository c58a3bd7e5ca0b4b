"""The backbone registry and the one factory: any timm model, VGG16 as in the tutorial, built into a
``headstart.models.classifier.Classifier`` with its weights and their preprocessing.

>>> model = create_model("efficientnet_lite0", num_classes=11)   # bundled ImageNet weights
>>> [g.name for g in model.groups][:3]
['stem', 'blocks.0', 'blocks.1']
>>> model.preprocessing.input_size
224

``REGISTRY`` holds the curated backbones (hub tag, preprocessing, notes; ``list_backbones`` is the
table ``headstart backbones`` prints); any other name is looked up in timm (``resolve``).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

import torch

from headstart.checks import ANY_INPUT_SIZE, CLASSES, check_number
from headstart.data.preprocessing import IMAGENET, INCEPTION
from headstart.errors import ConfigError, WeightsError
from headstart.models.backbone import BackboneInfo
from headstart.models.classifier import Classifier, HeadConfig, count_params
from headstart.models.timm_backbones import TimmBody
from headstart.models.vgg16 import VGG16Body
from headstart.models.weights import FILE_SUFFIXES, WEIGHT_SOURCES

DEFAULT_BACKBONE = "efficientnet_lite0"

REGISTRY: dict[str, BackboneInfo] = {
    info.name: info
    for info in (
        BackboneInfo(
            "efficientnet_lite0",
            TimmBody,
            "tf_efficientnet_lite0",
            "bundled",
            "tf_efficientnet_lite0.in1k",
            INCEPTION,
            "bundled ImageNet weights, works offline; the default",
        ),
        BackboneInfo(
            "vgg16",
            VGG16Body,
            "vgg16",
            "hub",
            "torchvision IMAGENET1K_V1",
            IMAGENET,
            "the tutorial's network; Keras .h5 weights load with Caffe preprocessing",
        ),
        BackboneInfo("resnet50", TimmBody, "resnet50", "hub", "resnet50.a1_in1k", IMAGENET),
        BackboneInfo(
            "mobilenetv3_large_100", TimmBody, "mobilenetv3_large_100", "hub", "mobilenetv3_large_100.ra_in1k", IMAGENET
        ),
        BackboneInfo("convnext_tiny", TimmBody, "convnext_tiny", "hub", "convnext_tiny.in12k_ft_in1k", IMAGENET),
        BackboneInfo(
            "vit_small_patch16_224",
            TimmBody,
            "vit_small_patch16_224",
            "hub",
            "vit_small_patch16_224.augreg_in21k_ft_in1k",
            INCEPTION,
        ),
    )
}


# --- the factory --------------------------------------------------------------------------


def resolve(backbone: str) -> BackboneInfo:
    """A backbone name, curated or any timm model's, as what builds it and its defaults."""
    import timm

    if backbone in REGISTRY:
        return REGISTRY[backbone]
    if timm.is_model(backbone):
        return BackboneInfo(backbone, TimmBody, backbone, "hub", backbone, IMAGENET)
    close = difflib.get_close_matches(backbone, list(REGISTRY) + timm.list_models(), n=3, cutoff=0.6)
    raise ConfigError(
        f"Unknown backbone '{backbone}'. Curated: {', '.join(REGISTRY)}; any timm model name works too"
        + (f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models()).")
        + f" Received: backbone={backbone!r}"
    )


def _weights_source(info: BackboneInfo, weights: str | Path) -> str:
    """ "hub", "bundled", "none" or a file's path, from what ``create_model`` was given."""
    source = str(weights)
    if isinstance(weights, str) and weights not in WEIGHT_SOURCES and not Path(weights).suffix:
        raise WeightsError(
            f"Unknown weights '{weights}'. Use one of {', '.join(WEIGHT_SOURCES)} or a file "
            f"({', '.join(FILE_SUFFIXES)}). Received: weights={weights!r}"
        )
    if source == "default":
        return info.default_weights
    if source == "bundled" and info.timm_name != "tf_efficientnet_lite0":
        raise WeightsError(
            f"Only efficientnet_lite0 has bundled weights. Received: backbone={info.name!r}, weights='bundled'"
        )
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
    # Checked before anything is allocated: a checkpoint's metadata comes here as a user's call does.
    check_number("num_classes", num_classes, CLASSES)
    if input_size is not None:
        check_number("input_size", input_size, ANY_INPUT_SIZE)
    if head == "pretrained" and not info.adapter.has_pretrained_head:  # said before any weights are fetched
        raise ConfigError(
            f"{backbone} has no pretrained classifier to keep (vgg16 here is the convolutional part "
            "only, as Keras' include_top=False). Use the default head."
        )

    body = info.adapter.build(info, "none" if source not in WEIGHT_SOURCES else source, input_size)
    if source not in WEIGHT_SOURCES:
        body.load_file(Path(source))
    preprocessing = body.preprocessing
    if input_size:
        preprocessing = dataclasses.replace(preprocessing, input_size=input_size)

    if head == "pretrained":
        head_module = body.pretrained_head()
        if head_module.out_features != num_classes:
            raise ConfigError(
                f"The pretrained head has {head_module.out_features} classes. Received: num_classes={num_classes}"
            )
    else:
        head_cfg = (
            HeadConfig(**head) if isinstance(head, dict) else head if isinstance(head, HeadConfig) else HeadConfig()
        )
        head_module = head_cfg.build(body.num_features, num_classes)
    config = {
        "backbone": backbone,
        "num_classes": num_classes,
        "weights": str(weights),
        "head": "pretrained" if head == "pretrained" else dataclasses.asdict(head_cfg),
        "input_size": preprocessing.input_size,
    }
    return Classifier(body, head_module, preprocessing, backbone=backbone, config=config)


def list_backbones() -> list[dict]:
    """The curated backbones: name, parameters (without head), input size, where weights come from."""
    rows = []
    for info in REGISTRY.values():
        with torch.device("meta"):  # count parameters without allocating them
            model = create_model(info.name, 2, weights="none", head={"dropout": 0.0, "hidden": 0})
        rows.append(
            {
                "name": info.name,
                "timm": info.timm_name,
                "params": count_params(model.body),
                "groups": len(model.groups),
                "input_size": info.preprocessing.input_size,
                "weights": "bundled (offline)" if info.default_weights == "bundled" else "hub",
                "note": info.note,
            }
        )
    return rows
