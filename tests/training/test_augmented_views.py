"""Augmented views: computed once through the frozen layers, one per image per epoch, a
different one each epoch, seeded, in fp16 within a stated budget (memory, or a memory map)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from headstart.config import TrainConfig, as_trained
from headstart.data.cache import decoded_images
from headstart.data.dataset import load_dataset, split_indices
from headstart.data.image_set import ImageSet
from headstart.data.samplers import EpochSampler
from headstart.errors import ConfigError
from headstart.training import augmented_views as views
from headstart.training.distributed import Ranks
from headstart.training.fit import build_model, fit
from headstart.training.frozen_pass import leading_frozen
from helpers.datasets import TINY, TINY_OPTIONS, count_stem_images
from helpers.training import explained

TRAIN = sum(TINY["training"])
OTHERS = sum(TINY["validation"]) + sum(TINY["evaluation"])


def _inputs(tiny, **options):
    cfg = TrainConfig(data=str(tiny), strategy="half", aug_views=3, **TINY_OPTIONS, **options)
    ds = load_dataset(tiny)
    model, _ = build_model(cfg, ds.num_classes)
    ds, store = decoded_images(ds, model.preprocessing, progress=False)
    inputs, trunk = views.view_inputs(cfg, model, ds, store, progress=False, ranks=Ranks())
    return cfg, model, ds, store, inputs


def test_views_are_the_recipes_augmentation_through_the_frozen_prefix_in_fp16(tiny):
    cfg, model, ds, store, inputs = _inputs(tiny)
    train = inputs["training"]
    assert (
        isinstance(train, views.ViewSet) and train.views.dtype == np.float16 and not isinstance(train.views, np.memmap)
    )
    assert train.views.shape[:2] == (3, TRAIN) and len(train) == TRAIN
    # View v of image i is what the frozen prefix makes of image i augmented as epoch v augments it.
    idx, labels = split_indices(ds)["training"]
    augmented = ImageSet(store, idx, labels, augment=True, seed=cfg.seed)
    prefix = model.split(leading_frozen(model))[0].eval()
    for v in range(3):
        augmented.epoch = v
        with torch.no_grad():
            expected = prefix(torch.stack([augmented[i][0] for i in (0, 5)]))
        got = torch.from_numpy(train.views[v, [0, 5]].astype(np.float32))
        torch.testing.assert_close(got, expected, atol=2e-2, rtol=1e-2)  # fp16 storage
    assert not np.array_equal(train.views[0], train.views[1])  # the views really differ
    # Validation and evaluation: not augmented, as without views.
    assert len(inputs["validation"]) == sum(TINY["validation"])


def test_same_seed_same_views_another_seed_other_views(tiny):
    a = _inputs(tiny)[-1]["training"].views
    b = _inputs(tiny)[-1]["training"].views
    c = _inputs(tiny, seed=1)[-1]["training"].views
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_each_epoch_reads_one_view_per_image_a_different_one_than_the_epoch_before():
    k, n = 3, 10
    stored = np.arange(k * n, dtype=np.float16).reshape(k, n, 1)  # view v of image i holds v * n + i
    seen = []
    for _ in range(2):  # twice from scratch: the same seed gives the same choice
        sampler = EpochSampler(views.ViewSet(stored, list(range(n)), seed=0), seed=0)
        epochs = []
        for epoch in range(2 * k):
            sampler.set_epoch(epoch)
            read = [sampler.dataset[j] for j in sampler]
            assert sorted(label for _, label in read) == list(range(n))  # every image once
            epochs.append({label: int(x.item()) // n for x, label in read})  # image -> its view this epoch
        seen.append(epochs)
    first, again = seen
    assert first == again
    for i in range(n):
        assert all(first[e][i] != first[e + 1][i] for e in range(2 * k - 1))  # never the same view twice running
        assert sorted(first[e][i] for e in range(k)) == list(range(k))  # every view once in K epochs
    assert len({first[0][i] for i in range(n)}) > 1  # not all images on the same view


def test_half_with_augmentation_runs_from_the_views_computed_once(tiny, tmp_path: Path, monkeypatch, caplog):
    """The frozen stem runs once per view and image, whatever the epochs; no 'every epoch' warning;
    the views memory-mapped when over the RAM limit; K and their size recorded."""
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # nothing kept by an earlier run
    stem_images = count_stem_images(monkeypatch)
    monkeypatch.setattr(views, "RAM_LIMIT", 0)  # memory-mapped, as a large dataset's views would be
    with caplog.at_level(logging.INFO):
        run = fit(tiny, strategy="half", epochs=3, aug_views=2, runs_dir=tmp_path, name="v", **TINY_OPTIONS)
    # 2 views of each training image, once, for 3 epochs; then the report's maps of the wrong evaluation images
    assert sum(stem_images) == 2 * TRAIN + OTHERS + explained(run)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "every epoch" not in messages and "memory-mapped" in messages
    metrics = json.loads((run.dir / "metrics.json").read_text())
    assert metrics["aug_views"] == 2 and metrics["aug_views_bytes"] > 0
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["aug_views"] == 2
    assert "Augmented views: 2 views of each training image" in (run.dir / "report.html").read_text()


def test_the_budget_lowers_k_with_a_warning_naming_both(caplog):
    one = 10 * 4 * 2  # bytes of one view: 10 images of 4 fp16 values
    cfg = TrainConfig(strategy="half", aug_views=5, aug_views_budget_gb=2.5 * one / 1e9)
    with caplog.at_level(logging.WARNING, logger="headstart.training.augmented_views"):
        stored = views._storage(cfg, 10, (4,))
    assert stored.shape == (2, 10, 4) and stored.dtype == np.float16
    warning = caplog.records[-1].getMessage()
    assert "5 views" in warning and "using 2 views" in warning and "--aug-views-budget-gb" in warning
    small = TrainConfig(strategy="half", aug_views=5, aug_views_budget_gb=0.5 * one / 1e9)
    assert views._storage(small, 10, (4,)) is None and "no views" in caplog.records[-1].getMessage()


def test_over_the_ram_limit_views_are_memory_mapped_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    monkeypatch.setattr(views, "RAM_LIMIT", 100)
    stored = views._storage(TrainConfig(strategy="half", aug_views=2), 10, (4,))
    assert isinstance(stored, np.memmap) and stored.shape == (2, 10, 4) and (tmp_path / "views").is_dir()
    stored[1] = 1.5
    assert float(stored[1, 3, 2]) == 1.5
    assert not any((tmp_path / "views").iterdir())  # an unnamed file: nothing left behind


@pytest.mark.parametrize(
    "options, named",
    [
        (dict(aug_views=-1), ["aug_views must be between 0 and 64", "aug_views=-1"]),
        (
            dict(aug_views=2, aug_views_budget_gb=0),
            ["aug_views_budget_gb must be greater than 0", "aug_views_budget_gb=0"],
        ),
        (
            dict(aug_views=2, strategy="full"),
            ["nothing is frozen", "aug_views=2 with strategy='full'", "features, partial, half"],
        ),
        (dict(aug_views=2, strategy="gradual"), ["aug_views=2 with strategy='gradual'"]),
        (
            dict(aug_views=2, strategy="half", augment=False),
            ["augmentation is off", "aug_views=2 with augment=False", "--augment"],
        ),
        (dict(aug_views=2, strategy="half", cache_frozen=False), ["cache_frozen=False"]),
    ],
)
def test_bad_view_options_are_refused_naming_the_value_and_the_fix(options, named):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**options)
    assert all(text in str(e.value) for text in named), str(e.value)


def test_features_keep_augmentation_only_with_views():
    assert as_trained(TrainConfig(strategy="features", aug_views=2)).augment is True
    assert as_trained(TrainConfig(strategy="features")).augment is False


def test_the_cli_flags_reach_the_config(monkeypatch):
    import headstart.training.fit
    from headstart.cli.main import app
    from headstart.config import resolve_config

    asked = {}

    def fake_fit(data, config_file=None, resume=None, progress=False, **options):
        asked.update(options)
        raise KeyboardInterrupt  # the CLI's Ctrl-C exit: nothing trains

    monkeypatch.setattr(headstart.training.fit, "fit", fake_fit)
    result = CliRunner().invoke(
        app, ["train", "demo", "--strategy", "half", "--aug-views", "4", "--aug-views-budget-gb", "0.5"]
    )
    assert result.exit_code == 130, result.output
    cfg = resolve_config(overrides=asked)
    assert (cfg.aug_views, cfg.aug_views_budget_gb) == (4, 0.5)
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["aug_views"] == 4  # config.yaml is this dict


@pytest.mark.parametrize(
    "advised, views_left", [({"strategy": "half", "augment": False}, 3), ({"strategy": "full"}, 0)]
)
def test_strategy_auto_keeps_the_views_where_the_advised_strategy_can_use_them(
    advised, views_left, monkeypatch, caplog
):
    from headstart.advice import strategy as advice

    class Advice:
        def overrides(self):
            return advised

        def to_dict(self):
            return {}

    monkeypatch.setattr(advice, "advise", lambda *a, **k: Advice())
    cfg = advice.advised_config(TrainConfig(strategy="auto", aug_views=3), None, {"aug_views": 3}, progress=False)
    assert (cfg.strategy, cfg.aug_views, cfg.augment) == (advised["strategy"], views_left, True)
    assert ("no frozen layers" in caplog.text) == (views_left == 0)


def test_no_more_views_than_the_epochs_can_read(tiny, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="headstart.training.augmented_views"):
        run = fit(tiny, strategy="features", aug_views=4, epochs=2, runs_dir=tmp_path, name="v", **TINY_OPTIONS)
    assert run.metrics["aug_views"] == 2
    assert "4 views, but the run's 2 epochs read 2 at most: computing 2" in caplog.text
