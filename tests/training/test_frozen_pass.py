"""The frozen pass: computed once, identical to running the frozen layers every epoch; seeded order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headstart.data.cache import decoded_images
from headstart.data.dataset import load_dataset, split_indices
from headstart.data.image_set import ImageSet
from headstart.data.preprocessing import Preprocessing
from headstart.data.samplers import EpochSampler
from headstart.models.timm_backbones import TimmBody
from headstart.training.fit import fit
from helpers.datasets import TINY_IMAGES, TINY_OPTIONS, count_stem_images
from helpers.training import explained


def test_features_run_the_backbone_once_per_image(tiny, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # no features kept by an earlier run
    seen = []
    forward = TimmBody.forward
    monkeypatch.setattr(TimmBody, "forward", lambda self, x: (seen.append(len(x)), forward(self, x))[1])
    fit(tiny, strategy="features", epochs=3, runs_dir=tmp_path, name="f", **TINY_OPTIONS)
    assert sum(seen) == TINY_IMAGES  # every image through the backbone exactly once, for 3 epochs


def test_frozen_prefix_is_computed_once_and_matches_the_uncached_path(tiny, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # no activations kept by an earlier run
    stem_images = count_stem_images(monkeypatch)
    opts = dict(strategy="half", epochs=3, augment=False, deterministic=True, runs_dir=tmp_path, **TINY_OPTIONS)
    cached = fit(tiny, name="cached", **opts)
    # the frozen stem ran once per image, for 3 epochs; then the report's maps of the wrong evaluation images
    assert sum(stem_images) == TINY_IMAGES + explained(cached)
    uncached = fit(tiny, name="uncached", cache_frozen=False, **opts)
    # fp16 activations against fp32 ones: equal to rounding (a wrong cut or input is off by far more).
    for a, b in zip(cached.history, uncached.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-2) and a["val_loss"] == pytest.approx(
            b["val_loss"], rel=1e-2
        )
    assert abs(cached.metrics["accuracy"] - uncached.metrics["accuracy"]) <= 1 / 9


def test_epoch_order_depends_only_on_seed_and_epoch():
    data = list(range(20))
    a, b = EpochSampler(data, seed=1), EpochSampler(data, seed=1)
    first = list(a)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) != first and sorted(first) == data
    assert list(EpochSampler(data, seed=2)) != first


def test_augmentation_of_an_image_depends_only_on_seed_epoch_and_index(tiny):
    ds, store = decoded_images(load_dataset(tiny), Preprocessing(input_size=32), progress=False)
    idx, labels = split_indices(ds)["training"]
    images = ImageSet(store, idx, labels, augment=True, seed=0)
    images.epoch = 1
    x1 = images[5][0]
    torch.manual_seed(123)  # whatever else used the global generator
    assert torch.equal(images[5][0], x1)
    images.epoch = 2
    assert not torch.equal(images[5][0], x1)
    plain = ImageSet(store, idx, labels, augment=False)[5][0]
    assert plain.shape == x1.shape == (3, 32, 32) and 0 <= float(plain.min()) and float(plain.max()) <= 1
