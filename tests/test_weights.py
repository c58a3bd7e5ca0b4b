"""Weights from files: PyTorch state dicts, safetensors, and the tutorial's Keras .h5."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from PIL import Image

from conftest import photo
from headstart.backbones import create_model, load_saved_model, save_model
from headstart.errors import WeightsError
from headstart.vgg16 import VGG16_KERAS_LAYERS
from headstart.weights import CAFFE, Preprocessing

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


def _write_keras_h5(path: Path, weights: dict) -> Path:
    """A file laid out as Keras 2's save_weights writes it (the tutorial's notop .h5)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in VGG16_KERAS_LAYERS]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name in VGG16_KERAS_LAYERS:
            g = f.create_group(name)
            if name in weights:
                names = [f"{name}/kernel:0", f"{name}/bias:0"]
                g.attrs["weight_names"] = [n.encode() for n in names]
                for n, value in zip(names, weights[name]):
                    g.create_dataset(n, data=value)
            else:
                g.attrs["weight_names"] = np.array([], dtype="S1")
    return path


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
    with caplog.at_level(logging.WARNING, logger="headstart.weights"):
        create_model("resnet18", 3, weights=tmp_path / "w.pt")
    text = caplog.text
    assert "1 missing (left as initialised): layer4.1.bn2.bias" in text
    assert "1 unexpected (ignored): extra.weight" in text


def test_shape_mismatch_and_bad_files_are_clear_errors(tmp_path: Path):
    state = create_model("resnet18", 3, weights="none").body.net.state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"'conv1.weight' has shape \(32, 3, 7, 7\) but the model needs \(64, 3, 7, 7\)"):
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

    from headstart import weights as hs_weights

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
    with pytest.raises(WeightsError, match="Could not fetch the pretrained weights of 'resnet50.a1_in1k'.*HF_HUB_OFFLINE=1"):
        create_model("resnet50", 3, weights="hub")
    assert tried == [(("huggingface.co", 443), 3.0)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline on purpose: the hub's cache answers, no check
    hs_weights.check_hub("resnet50", "huggingface.co")
    assert len(tried) == 1
