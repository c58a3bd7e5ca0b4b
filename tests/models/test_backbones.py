"""Backbones: the factory over the registry, VGG16's tutorial parity, groups and preprocessing."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.data.preprocessing import INCEPTION, Preprocessing
from headstart.errors import ConfigError
from headstart.models.backbone import Body
from headstart.models.classifier import count_params
from headstart.models.factory import REGISTRY, create_model
from headstart.models.vgg16 import VGG16_KERAS_LAYERS

runner = CliRunner()
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
BLOCKS = [f"blocks.{i}" for i in range(12)]
GROUPS = {
    "efficientnet_lite0": ["stem", *BLOCKS[:7], "final"],
    "vgg16": ["block1", "block2", "block3", "block4", "block5"],
    "resnet50": ["stem", "layer1", "layer2", "layer3", "layer4"],
    "mobilenetv3_large_100": ["stem", *BLOCKS[:7], "final"],
    "convnext_tiny": ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "final"],
    "vit_small_patch16_224": ["stem", *BLOCKS, "final"],
}


@functools.cache
def random_model(name: str):
    """A 4-class model of a curated backbone, random weights, 64 px, in eval mode (not to be changed)."""
    torch.manual_seed(0)
    return create_model(name, 4, weights="none", input_size=64).eval()


@pytest.fixture(scope="module", autouse=True)
def _free_random_models():
    yield
    random_model.cache_clear()  # a few hundred MB of weights: not kept for the rest of the session


@pytest.fixture(scope="module")
def imagenet_lite0():
    return create_model("efficientnet_lite0", 1000, head="pretrained").eval()


def _top5(model, photo: np.ndarray) -> tuple[list[int], torch.Tensor]:
    x = model.preprocessing.to_tensor(Image.fromarray(photo))[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    return probs.topk(5).indices.tolist(), probs


def test_bundled_weights_see_a_cat_in_chelsea(imagenet_lite0):
    from skimage import data

    top5, probs = _top5(imagenet_lite0, data.chelsea())
    # The real network's answer: three cat classes first, then lynx (287); almost all the mass on cats.
    assert set(top5[:3]) <= set(CATS), top5
    assert probs[list(CATS)].sum() > 0.9


def test_bundled_weights_see_espresso_in_coffee(imagenet_lite0):
    from skimage import data

    top5, probs = _top5(imagenet_lite0, data.coffee())
    assert top5[0] == 967 and probs[967] > 0.5


def test_bundled_is_the_default_and_records_its_preprocessing():
    model = create_model(num_classes=3)
    assert model.backbone == "efficientnet_lite0" and model.config["weights"] == "default"
    assert model.preprocessing == INCEPTION  # inputs scaled to [-1, 1]
    x = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(model.normalize(x), torch.zeros_like(x))
    # Really the ImageNet weights: the stem differs from a random initialisation's.
    random = create_model(num_classes=3, weights="none")
    assert not torch.equal(model.body.net.conv_stem.weight, random.body.net.conv_stem.weight)


def test_vgg16_with_the_tutorial_head_has_the_tutorials_parameter_counts():
    model = create_model("vgg16", 11, weights="none")
    assert count_params(model) == 14_767_099
    assert count_params(model.body) == 14_714_688
    assert [g.name for g in model.groups] == ["block1", "block2", "block3", "block4", "block5"]
    layers = model.body.layers()
    assert (
        layers is model.body.keras_layers
        and len(layers) == 19
        and layers[0][0] == "input_1"
        and layers[-1][0] == "block5_pool"
    )
    for _, module in layers[:-9]:  # the tutorial: for layer in model_vgg.layers[:-9]: trainable = False
        if module is not None:
            module.requires_grad_(False)
    assert [name for name, _ in layers[:-9]][-1] == "block3_conv3"
    assert count_params(model, trainable_only=True) == 13_031_611
    assert count_params(model) - count_params(model, trainable_only=True) == 1_735_488


def test_head_is_configurable():
    default = create_model("efficientnet_lite0", 5, weights="none").head
    assert [type(m).__name__ for m in default] == ["Dropout", "Linear", "ReLU", "Linear"]
    assert default[0].p == 0.2 and default[1].out_features == 100 and default[3].out_features == 5
    linear = create_model("efficientnet_lite0", 5, weights="none", head={"dropout": 0.5, "hidden": 0}).head
    assert [type(m).__name__ for m in linear] == ["Dropout", "Linear"] and linear[1].in_features == 1280


@pytest.mark.parametrize("name", list(REGISTRY))
def test_curated_backbones_shapes_groups_preprocessing(name: str):
    model = random_model(name)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 4)
    groups = model.groups
    assert [g.name for g in groups] == GROUPS[name]  # stem first (vgg16: Keras' block names), final last
    # The groups cover every backbone parameter exactly once, in input-to-output order.
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.body.parameters()}
    assert all(g.num_params() > 0 for g in groups)
    pre = model.preprocessing
    assert pre.input_size == 64 and len(pre.mean) == len(pre.std) == 3
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert model.config["backbone"] == name and model.config["input_size"] == 64


def test_any_timm_name_works_and_unknown_names_list_the_choices():
    model = create_model("resnet18", 3, weights="none")
    assert [g.name for g in model.groups] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    with pytest.raises(
        ValueError, match=r"Unknown backbone 'resnet5O'.*Curated: efficientnet_lite0, vgg16.*did you mean"
    ):
        create_model("resnet5O", 3)


def test_offline_hub_request_is_a_clear_error_with_exit_2(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["backbones", "resnet50", "--weights", "hub"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "Could not fetch the pretrained weights of 'resnet50" in message
    assert "--weights FILE" in message and "Traceback" not in message


def test_backbones_cli_lists_and_shows():
    result = runner.invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    for name in REGISTRY:
        assert name in result.output
    assert "14,714,688" in result.output  # VGG16's convolutional part
    shown = runner.invoke(app, ["backbones", "vgg16"])
    assert shown.exit_code == 0 and "14,767,099 parameters" in shown.output and "block5" in shown.output


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_body_honours_the_contract(name: str):
    body = random_model(name).body
    assert isinstance(body, Body)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        pooled = body.pool(body.forward_features(x))
        assert torch.allclose(body(x), pooled, rtol=1e-5, atol=1e-6)
    assert pooled.shape == (2, body.num_features)
    # Stages, where the architecture has them (not a ViT's), are named like the groups, input side
    # first, so the forward pass can be cut after any group but the last.
    stages = body.stages()
    names = [g.name for g in body.groups()]
    assert stages is None if name.startswith("vit") else [n for n, _ in stages][: len(names) - 1] == names[:-1]
    layers = body.layers()
    if name == "vgg16":
        assert [n for n, _ in layers] == list(VGG16_KERAS_LAYERS) and len(layers) == 19
        assert layers[0][1] is None and all(m is not None for _, m in layers[1:])
        assert not body.has_pretrained_head
        with pytest.raises(ConfigError, match="no pretrained classifier"):
            body.pretrained_head()
        with pytest.raises(ConfigError, match="vgg16 has no pretrained classifier to keep"):
            create_model("vgg16", 1000, weights="hub", head="pretrained")  # said before anything is fetched
    else:
        assert layers is None and body.has_pretrained_head
        with torch.no_grad():  # the ImageNet classifier the weights came with, on the pooled features
            assert body.pretrained_head()(pooled).shape == (2, 1000)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_forward_can_be_cut_after_any_frozen_group(name: str):
    model = random_model(name)
    x = torch.rand(2, 3, 64, 64)
    cuts = 0
    with torch.no_grad():
        reference = model.forward_features(x)
        for k in range(1, len(model.groups)):
            cut = model.split(k)
            if cut is None:
                continue
            prefix, rest = cut
            assert torch.allclose(rest(prefix(x)), reference, atol=1e-5), k
            cuts += 1
    # The CNN families are cut anywhere; a ViT (token bookkeeping between stages) is not cut.
    assert cuts == (0 if name.startswith("vit") else len(model.groups) - 1)
