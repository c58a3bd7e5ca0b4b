"""Weights from files: PyTorch state dicts, safetensors, and the tutorial's Keras .h5."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.data.preprocessing import CAFFE, Preprocessing
from headstart.errors import WeightsError
from headstart.models.factory import create_model
from headstart.models.saving import load_saved_model, save_model
from headstart.models.vgg16 import VGG16_KERAS_LAYERS
from helpers.datasets import photo

# --- Keras .h5 ---------------------------------------------------------------------------

VGG16_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def _keras_vgg16_weights(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random VGG16 conv weights in Keras layout: kernel (3, 3, in, out), bias (out,)."""
    rng = np.random.default_rng(seed)
    out, cin = {}, 3
    for b, (cout, n) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, n + 1):
            kernel = rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32)
            out[f"block{b}_conv{i}"] = (kernel, rng.normal(0, 0.01, cout).astype(np.float32))
            cin = cout
    return out


def _write_keras_h5(path: Path, weights: dict, layout: str = "keras2") -> Path:
    """A file laid out as Keras writes it, VGG16(include_top=False)'s 19 layers in order:

    - ``keras2``: Keras 2's save_weights: a group per layer holding ``<layer>/kernel:0`` and
      ``<layer>/bias:0`` (so nested groups ``block1_conv1/block1_conv1/kernel:0``);
    - ``keras1``: Keras 1's save_weights, as in the tutorial's own
      ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``: datasets ``block1_conv1_W_1:0``
      and ``block1_conv1_b_1:0`` right in the layer's group; weightless layers' ``weight_names``
      an empty list (h5py stores it as an empty float array);
    - ``model``: Keras 2's model.save of the tutorial's classifier, VGG16 nested inside it: root
      attributes and groups under ``model_weights``, one ``vgg16`` group listing all 26 weights,
      then the head's dense layers (not VGG16's: ignored), and an ``optimizer_weights`` group.
    """
    import h5py

    def layer_names(group, names: list[str], backend: bytes = b"tensorflow", version: bytes = b"2.2.4"):
        # What Keras writes: numpy arrays of fixed-length bytes ('S' dtype).
        group.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        group.attrs["backend"] = backend
        group.attrs["keras_version"] = version

    with h5py.File(path, "w") as f:
        if layout == "model":
            f.attrs["keras_version"], f.attrs["backend"] = b"2.2.4", b"tensorflow"
            f.attrs["model_config"] = b'{"class_name": "Model"}'
            root = f.create_group("model_weights")
            layer_names(root, ["input_2", "vgg16", "global_average_pooling2d_1", "dense_1", "dense_2"])
            for name in ("input_2", "global_average_pooling2d_1"):
                root.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")
            vgg = root.create_group("vgg16")
            names = [f"{layer}/{part}:0" for layer in weights for part in ("kernel", "bias")]
            vgg.attrs["weight_names"] = np.array([n.encode() for n in names])
            for layer, (kernel, bias) in weights.items():
                vgg.create_dataset(f"{layer}/kernel:0", data=kernel)
                vgg.create_dataset(f"{layer}/bias:0", data=bias)
            for name, shape in (("dense_1", (512, 100)), ("dense_2", (100, 11))):
                g = root.create_group(name)
                g.attrs["weight_names"] = np.array([f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()])
                g.create_dataset(f"{name}/kernel:0", data=np.ones(shape, np.float32))
                g.create_dataset(f"{name}/bias:0", data=np.zeros(shape[1], np.float32))
            f.create_group("optimizer_weights").create_dataset("Adam/iterations:0", data=np.int64(3))
            return path
        keras1 = layout == "keras1"
        layer_names(f, list(VGG16_KERAS_LAYERS), version=b"1.2.2" if keras1 else b"2.2.4")
        for name in VGG16_KERAS_LAYERS:
            g = f.create_group(name)
            if name in weights:
                names = [f"{name}_W_1:0", f"{name}_b_1:0"] if keras1 else [f"{name}/kernel:0", f"{name}/bias:0"]
                g.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
                for n, value in zip(names, weights[name]):
                    g.create_dataset(n, data=value)
            else:
                g.attrs["weight_names"] = [] if keras1 else np.array([], dtype="S1")
    return path


def _torchvision_vgg16(seed: int = 0) -> torch.nn.Module:
    """torchvision's VGG16 convolutional part, random weights, random (not zero) biases."""
    from torchvision.models import vgg16

    torch.manual_seed(seed)
    features = vgg16(weights=None).features.eval()
    with torch.no_grad():
        for m in features:
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_(0, 0.05)
    return features


def _as_keras(features: torch.nn.Module) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A torch VGG16's convolutions as Keras' layers: kernel (height, width, in, out), bias (out,)."""
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    names = [n for n in VGG16_KERAS_LAYERS if "conv" in n]
    assert len(convs) == len(names) == 13
    return {
        n: (m.weight.detach().numpy().transpose(2, 3, 1, 0).copy(), m.bias.detach().numpy().copy())
        for n, m in zip(names, convs)
    }


def _numpy_vgg16_features(rgb_uint8: np.ndarray, weights: dict) -> np.ndarray:
    """Keras' VGG16(include_top=False) + GlobalAveragePooling2D, in plain NumPy, with Caffe
    preprocessing (imagenet_utils.preprocess_input): an independent computation to compare with."""
    x = rgb_uint8.astype(np.float64)[..., ::-1] - np.array([103.939, 116.779, 123.68])  # RGB->BGR, mean
    for b, (_, n) in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, n + 1):
            kernel, bias = weights[f"block{b}_conv{i}"]
            padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
            windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))  # H,W,C,3,3
            x = np.maximum(np.einsum("hwcij,ijco->hwo", windows, kernel.astype(np.float64)) + bias, 0)
        h, w, c = x.shape
        x = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))  # 2x2 max pool
    return x.mean(axis=(0, 1))


def test_keras_h5_loads_into_vgg16_and_matches_an_independent_computation(tmp_path: Path):
    weights = _keras_vgg16_weights()
    path = _write_keras_h5(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", weights)
    model = create_model("vgg16", 11, weights=path, input_size=32).eval()
    assert model.preprocessing == dataclasses.replace(CAFFE, input_size=32)
    image = photo(3, (32, 32))
    with torch.no_grad():
        ours = model.forward_features(model.preprocessing.to_tensor(image)[None])[0].double().numpy()
    expected = _numpy_vgg16_features(np.asarray(image), weights)
    assert expected.std() > 0.01  # a real signal, not all zeros
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("layout", ["keras1", "keras2", "model"])
def test_keras_h5_layouts_load_the_same_weights_as_torchvisions_vgg16(tmp_path: Path, layout: str, caplog):
    """The tutorial's own file (Keras 1 names, ``block1_conv1_W_1:0``) loads, as do Keras 2's
    save_weights and model.save files: the weights land exactly, the features equal torchvision's VGG16."""
    import h5py

    reference = _torchvision_vgg16()
    path = _write_keras_h5(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", _as_keras(reference), layout)
    if layout == "keras1":  # the layout of the original file, as h5py reads it back
        with h5py.File(path, "r") as f:
            assert f.attrs["layer_names"].dtype.kind == "S" and f.attrs["keras_version"] in (b"1.2.2", "1.2.2")
            assert list(f["block1_conv1"]) == ["block1_conv1_W_1:0", "block1_conv1_b_1:0"]
            assert f["block1_conv1/block1_conv1_W_1:0"].shape == (3, 3, 3, 64)
            assert f["block1_pool"].attrs["weight_names"].size == 0
    with caplog.at_level(logging.WARNING):
        model = create_model("vgg16", 11, weights=path, input_size=32).eval()
    assert model.preprocessing == dataclasses.replace(CAFFE, input_size=32)
    ours = model.body.features.state_dict()
    assert ours.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value), key
    if layout == "model":  # the head's layers are named as ignored; nothing is missing
        assert "ignored: dense_1, dense_2" in caplog.text and "missing" not in caplog.text
    else:
        assert caplog.text == ""

    image = photo(3, (32, 32))
    bgr = np.asarray(image, dtype=np.float32)[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    x = torch.from_numpy(bgr.copy()).permute(2, 0, 1)[None]  # Keras' preprocess_input (Caffe), 0-255 BGR
    with torch.no_grad():
        expected = reference(x).mean(dim=(2, 3))[0].double().numpy()  # + GlobalAveragePooling2D
        got = model.forward_features(model.preprocessing.to_tensor(image)[None])[0].double().numpy()
    assert expected.std() > 0.01  # a real signal, not all zeros
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_keras_h5_weights_are_placed_by_their_names_and_order_with_shapes_checked(tmp_path: Path, caplog):
    import h5py

    from headstart.models.keras_h5 import read_keras_h5

    weights = _keras_vgg16_weights()
    # Keras' own order is kernel, then bias; the names say which is which even when listed the other way.
    path = _write_keras_h5(tmp_path / "k1.h5", weights, "keras1")
    with h5py.File(path, "r+") as f:
        f["block2_conv1"].attrs["weight_names"] = np.array([b"block2_conv1_b_1:0", b"block2_conv1_W_1:0"])
    read = read_keras_h5(path)
    assert list(read)[:4] == ["block1_conv1/kernel", "block1_conv1/bias", "block1_conv2/kernel", "block1_conv2/bias"]
    assert len(read) == 26 and np.array_equal(read["block2_conv1/kernel"], weights["block2_conv1"][0])

    # Unnamed weights (Keras' "param_0"): the first of a layer is its kernel, the second its bias.
    path = _write_keras_h5(tmp_path / "p.h5", weights, "keras1")
    with h5py.File(path, "r+") as f:
        g = f["block1_conv1"]
        g.move("block1_conv1_W_1:0", "param_0")
        g.move("block1_conv1_b_1:0", "param_1")
        g.attrs["weight_names"] = np.array([b"param_0", b"param_1"])
    assert np.array_equal(read_keras_h5(path)["block1_conv1/bias"], weights["block1_conv1"][1])

    # Another model's layer names (a VGG16 built layer by layer): the 13 convolutions in the file's order.
    path = tmp_path / "sequential.h5"
    with h5py.File(path, "w") as f:
        names = [f"conv2d_{i}" for i in range(1, 14)]
        f.attrs["layer_names"] = np.array([n.encode() for n in ["input_1", *names]])
        f.create_group("input_1").attrs["weight_names"] = []
        for n, (kernel, bias) in zip(names, weights.values()):
            g = f.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}_W:0".encode(), f"{n}_b:0".encode()])
            g.create_dataset(f"{n}_W:0", data=kernel)
            g.create_dataset(f"{n}_b:0", data=bias)
    with caplog.at_level(logging.WARNING):
        model = create_model("vgg16", 3, weights=path, input_size=32)
    assert "taken in order" in caplog.text
    assert np.array_equal(model.body.features[0].bias.detach().numpy(), weights["block1_conv1"][1])
    assert np.array_equal(
        model.body.features[28].weight.detach().numpy(), weights["block5_conv3"][0].transpose(3, 2, 0, 1)
    )


def test_keras_h5_whose_tensors_do_not_fit_is_a_clear_error(tmp_path: Path):
    import h5py

    weights = _keras_vgg16_weights()
    # A kernel of another width.
    wrong = dict(weights, block3_conv2=(np.zeros((3, 3, 256, 128), np.float32), np.zeros(128, np.float32)))
    with pytest.raises(
        WeightsError, match=r"'block3_conv2' has a kernel of shape \(3, 3, 256, 128\).*needs \(3, 3, 256, 256\)"
    ):
        create_model("vgg16", 3, weights=_write_keras_h5(tmp_path / "wide.h5", wrong, "keras1"))
    # Theano's kernel order (the th_dim_ordering files).
    theano = {n: (k.transpose(3, 2, 0, 1).copy(), b) for n, (k, b) in weights.items()}
    with pytest.raises(WeightsError, match="Theano's order.*tf_dim_ordering_tf_kernels"):
        create_model("vgg16", 3, weights=_write_keras_h5(tmp_path / "th.h5", theano, "keras1"))
    # A layer without its bias.
    path = _write_keras_h5(tmp_path / "nobias.h5", weights, "keras1")
    with h5py.File(path, "r+") as f:
        f["block1_conv1"].attrs["weight_names"] = np.array([b"block1_conv1_W_1:0"])
    with pytest.raises(WeightsError, match="'block1_conv1' needs a kernel and a bias; it has kernel"):
        create_model("vgg16", 3, weights=path)
    # A weight listed but not stored.
    with h5py.File(path, "r+") as f:
        f["block1_conv1"].attrs["weight_names"] = np.array([b"block1_conv1_W_1:0", b"block1_conv1_b_2:0"])
    with pytest.raises(WeightsError, match="lists weight 'block1_conv1_b_2:0' but the file has no such dataset"):
        create_model("vgg16", 3, weights=path)
    # Another network altogether: no VGG16 names, not 13 convolutions.
    path = tmp_path / "small.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv2d_1", b"dense_1"])
        for n, shape in (("conv2d_1", (3, 3, 3, 32)), ("dense_1", (32, 10))):
            g = f.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}/kernel:0".encode(), f"{n}/bias:0".encode()])
            g.create_dataset(f"{n}/kernel:0", data=np.zeros(shape, np.float32))
            g.create_dataset(f"{n}/bias:0", data=np.zeros(shape[-1], np.float32))
    with pytest.raises(
        WeightsError, match="none of VGG16's convolution layers.*1 convolution kernels, not 13.*conv2d_1, dense_1"
    ):
        create_model("vgg16", 3, weights=path)
    # Not HDF5 at all.
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(WeightsError, match="Cannot read .* as an HDF5 file"):
        create_model("vgg16", 3, weights=tmp_path / "text.h5")


def test_cli_loads_the_tutorials_keras1_h5(tmp_path: Path):
    from typer.testing import CliRunner

    from headstart.cli.main import app

    path = _write_keras_h5(
        tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", _keras_vgg16_weights(), "keras1"
    )
    result = CliRunner().invoke(app, ["backbones", "vgg16", "--weights", str(path)])
    assert result.exit_code == 0, result.output
    assert "14,767,099 parameters" in result.output and "'channels': 'BGR'" in result.output


def test_keras_h5_for_another_backbone_or_not_keras_is_an_error(tmp_path: Path):
    path = _write_keras_h5(tmp_path / "w.h5", _keras_vgg16_weights())
    with pytest.raises(WeightsError, match="supported for vgg16"):
        create_model("resnet18", 3, weights=path)
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match="not a Keras weights file"):
        create_model("vgg16", 3, weights=tmp_path / "other.h5")


# --- PyTorch and safetensors ---------------------------------------------------------------


def _same_outputs(a, b) -> bool:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a.eval().forward_features(x), b.eval().forward_features(x), atol=1e-6)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_state_dict_files_load(tmp_path: Path, suffix: str):
    torch.manual_seed(1)
    source = create_model("resnet18", 3, weights="none", input_size=64)
    state = source.body.net.state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # a DDP checkpoint
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = create_model("resnet18", 3, weights=path, input_size=64)
    assert _same_outputs(source, loaded)
    assert not _same_outputs(source, create_model("resnet18", 3, weights="none", input_size=64))


def test_missing_and_unexpected_keys_are_reported(tmp_path: Path, caplog):
    state = create_model("resnet18", 3, weights="none").body.net.state_dict()
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with caplog.at_level(logging.WARNING, logger="headstart.models.weights"):
        create_model("resnet18", 3, weights=tmp_path / "w.pt")
    text = caplog.text
    assert "1 missing (left as initialised): layer4.1.bn2.bias" in text
    assert "1 unexpected (ignored): extra.weight" in text


def test_shape_mismatch_and_bad_files_are_clear_errors(tmp_path: Path):
    state = create_model("resnet18", 3, weights="none").body.net.state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(
        WeightsError, match=r"'conv1.weight' has shape \(32, 3, 7, 7\) but the model needs \(64, 3, 7, 7\)"
    ):
        create_model("resnet18", 3, weights=tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("resnet18", 3, weights=tmp_path / "nope.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(WeightsError, match="Cannot read weights from"):
        create_model("resnet18", 3, weights=tmp_path / "w.txt")
    with pytest.raises(WeightsError, match="Unknown weights 'imagenet'"):
        create_model("resnet18", 3, weights="imagenet")
    with pytest.raises(WeightsError, match="Only efficientnet_lite0 has bundled weights"):
        create_model("resnet18", 3, weights="bundled")


def test_saved_model_keeps_its_preprocessing_and_outputs(tmp_path: Path):
    path = _write_keras_h5(tmp_path / "w.h5", _keras_vgg16_weights())
    model = create_model("vgg16", 4, weights=path, input_size=32).eval()
    save_model(model, tmp_path / "m.safetensors", extra={"classes": ["a", "b", "c", "d"]})
    loaded, extra = load_saved_model(tmp_path / "m.safetensors")
    assert extra == {"classes": ["a", "b", "c", "d"]}
    assert loaded.preprocessing == model.preprocessing and loaded.preprocessing.channels == "BGR"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded.eval()(x), atol=1e-5)


def test_center_crop_is_the_centre_square_resized_even_for_extreme_shapes():
    pre = Preprocessing(input_size=32, resize="center_crop")
    wide = photo(3, (120, 60))
    expected = wide.crop((30, 0, 90, 60)).resize((32, 32), Image.BILINEAR)
    diff = np.abs(np.asarray(pre.resize_image(wide), dtype=int) - np.asarray(expected, dtype=int))
    # Equal inside; at the left and right edges the resampling filter reads just past the square.
    assert diff[:, 1:-1].max() <= 1 and diff.mean() < 0.5
    # 1 x 100,000 pixels: cropping first never builds a 32 x 3,200,000 intermediate image.
    thin = Image.new("RGB", (1, 100_000), (10, 200, 30))
    assert pre.resize_image(thin).size == (32, 32)
    assert np.asarray(pre.resize_image(thin))[16, 16].tolist() == [10, 200, 30]


def test_an_unreachable_hub_fails_fast_without_trying_to_download(monkeypatch):
    import socket

    import timm

    from headstart.models import weights as hs_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    tried = []

    def unreachable(address, timeout=None):
        tried.append((address, timeout))
        raise OSError("Network is unreachable")

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was tried: {args} {kwargs}")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(
        WeightsError, match="Could not fetch the pretrained weights of 'resnet50.a1_in1k'.*HF_HUB_OFFLINE=1"
    ):
        create_model("resnet50", 3, weights="hub")
    assert tried == [(("huggingface.co", 443), 3.0)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline on purpose: the hub's cache answers, no check
    hs_weights.check_hub("resnet50", "huggingface.co")
    assert len(tried) == 1
