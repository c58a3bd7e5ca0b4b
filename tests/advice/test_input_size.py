"""Resolution advice: the k-NN probe at several input sizes, --input-size auto, the warning
below the weights' native size."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from headstart.advice import input_size as size
from headstart.advice import strategy as A
from headstart.cli.main import app
from headstart.config import TrainConfig, load_config, resolve_config
from headstart.errors import ConfigError
from helpers.datasets import PHOTOS, TINY_OPTIONS

SOURCE = 128  # the photos' size: stripes 4 px apart survive at 96 px and are averaged away at 32 px
SMALL, LARGE = 32, 96


def make_striped(root: Path, per_class: int = 16, seed: int = 0) -> Path:
    """Real photos (random crops of scikit-image's, whatever the class) with a fine pattern printed
    over them: bars 2 px wide, 4 px apart, vertical in class 0 and horizontal in class 1. The class
    lives only in that detail: downsampled to 32 px the bars average to grey (what is left is the
    photo, which says nothing of the class); at 96 px they are still there."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SOURCE, :SOURCE]
    for c in range(2):
        bars = ((cols if c == 0 else rows) // 2) % 2
        for i in range(per_class + 8):
            arr = PHOTOS[rng.integers(len(PHOTOS))]
            h, w = arr.shape[:2]
            side = int(min(h, w) * rng.uniform(0.4, 0.8))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = np.asarray(
                Image.fromarray(arr[top : top + side, left : left + side]).resize((SOURCE, SOURCE)), np.float32
            )
            img = (0.5 * crop + 0.5 * 255 * bars[..., None]).astype(np.uint8)
            split = "training" if i < per_class else "validation" if i < per_class + 4 else "evaluation"
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / f"{c}_{i}.png")
    return root


@pytest.fixture(scope="module")
def striped(tmp_path_factory) -> Path:
    return make_striped(tmp_path_factory.mktemp("striped"))


@pytest.fixture
def two_sizes(monkeypatch):
    """Probe 32 and 96 px only (the native 224 would be slow here)."""
    monkeypatch.setattr(
        A, "candidate_sizes", lambda photo, native, asked=None: sorted({SMALL, LARGE, *([asked] if asked else [])})
    )


def test_candidate_sizes_around_the_photos_and_the_weights():
    assert size.candidate_sizes(160, 224) == [160, 224]  # close: the photos' own size and the native one
    assert size.candidate_sizes(128, 224) == [128, 176, 224]  # far apart: one between, on a log scale
    assert size.candidate_sizes(28, 224) == [32, 80, 224]  # rounded to multiples of 16
    assert size.candidate_sizes(1000, 224) == [224, 336]  # much larger photos: one above the native size
    assert size.candidate_sizes(240, 224) == [128, 224]  # the native size itself: is it worth its cost?
    assert size.candidate_sizes(160, 224, asked=64) == [64, 160, 224]  # the size asked for, measured too
    assert size.candidate_sizes(5000, 1024) == [608, 1024]  # never above 1024
    for photo in (1, 10, 100, 5000):
        assert all(16 <= s <= 1024 for s in size.candidate_sizes(photo, 224))


def test_the_smallest_size_within_a_point_of_the_best_is_recommended():
    probes = {
        128: {"final_knn": 0.67, "probe_seconds": 1.0},
        176: {"final_knn": 0.756, "probe_seconds": 2.0},
        224: {"final_knn": 0.76, "probe_seconds": 3.1},
    }
    res = size.choose_size(probes)
    assert res["input_size"] == 176  # 75.6 % is within a point of 76 %, at less cost
    assert res["why"] == "176 px: probe 76% vs 67% at 128 px, 2.0x the time"
    assert (res["reference"], res["gain"], res["time_ratio"]) == (128, 8.6, 2.0)
    probes[176]["final_knn"] = 0.70
    assert size.choose_size(probes)["input_size"] == 224
    probes[128]["final_knn"] = 0.755  # the smallest is as good: what the best larger one would cost
    res = size.choose_size(probes)
    assert res["input_size"] == 128 and res["why"] == "128 px: probe 76% vs 76% at 224 px, 0.3x the time"


def test_the_warning_below_the_native_size():
    assert size.input_size_warning(224, 224) is None and size.input_size_warning(None, 224) is None
    assert size.input_size_warning(192, 224) is None  # above 0.75 x 224
    plain = size.input_size_warning(128, 224)
    assert "128" in plain and "224 px" in plain and "--input-size auto" in plain and "headstart advise" in plain
    measured = {"resolution": {"sizes": [{"input_size": 128, "knn": 0.67}, {"input_size": 224, "knn": 0.76}]}}
    assert size.input_size_warning(128, 224, measured) == (
        "features at 128 px scored 9 points under 224 px on the probe; --input-size auto picks the size"
    )
    measured["resolution"]["sizes"][0]["knn"] = 0.755  # measured, and as good: nothing to say
    assert size.input_size_warning(128, 224, measured) is None
    for text in (plain, size.input_size_warning(64, 224)):
        assert "\n" not in text  # one line (make demo trains at 64 px on purpose)


def test_the_probe_ranks_fine_detail_higher_at_the_larger_size(striped):
    a = A.advise(striped, sizes=[SMALL, LARGE])
    knn = {r["input_size"]: r["knn"] for r in a.resolution["sizes"]}
    assert knn[LARGE] >= 0.9 and knn[SMALL] <= 0.75  # the bars are gone at 32 px: near chance (0.5)
    assert a.resolution["input_size"] == a.recommendation["input_size"] == LARGE
    assert a.resolution["photo_size"] == SOURCE and a.resolution["native_size"] == 224
    assert a.measurements["input_size"] == LARGE  # the case is measured at the recommended size
    assert a.resolution["why"].startswith(f"{LARGE} px: probe ") and f"at {SMALL} px" in a.resolution["why"]
    assert a.overrides()["input_size"] == LARGE
    # Without the resolution probe, one size as before.
    one = A.advise(striped, input_size=SMALL, resolution=False)
    assert one.resolution is None and "input_size" not in one.recommendation


def test_input_size_auto_trains_at_the_measured_size(striped, two_sizes, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["train", str(striped), "--input-size", "auto", "--epochs", "1", "--runs-dir", str(tmp_path), "--name", "auto"],
    )
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert saved["input_size"] == LARGE and saved["strategy"] == "features"  # a number, never "auto"
    assert saved["advice"]["taken"] == ["input_size"]  # the strategy named stays
    assert load_config(tmp_path / "auto" / "config.yaml").input_size == LARGE
    html = (tmp_path / "auto" / "report.html").read_text()
    assert f"Input size: {LARGE} px" in html and "<svg" in html and "took its input size (auto)" in html


def test_compare_input_size_auto_and_one_warning_for_all_its_runs(striped, tiny, two_sizes, tmp_path, caplog):
    from headstart.comparison import compare

    result = compare(striped, ["features"], input_size="auto", epochs=1, runs_dir=str(tmp_path), name="auto")
    assert result.runs["features"].config.input_size == LARGE
    assert json.loads((result.dir / "advice.json").read_text())["resolution"]["input_size"] == LARGE
    assert f"Input size: {LARGE} px" in (result.dir / "report.html").read_text()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="headstart.advice.input_size"):
        compare(
            tiny, ["features", "half"], epochs=1, advise=False, runs_dir=str(tmp_path), name="small", **TINY_OPTIONS
        )
    said = [r.getMessage() for r in caplog.records if "well below" in r.getMessage()]
    assert len(said) == 1 and "--input-size 32 is well below the 224 px" in said[0]


def test_train_warns_below_the_native_size_and_not_at_it(tiny, tmp_path, caplog):
    from headstart.training.fit import fit

    with caplog.at_level(logging.WARNING, logger="headstart.advice.input_size"):
        fit(tiny, strategy="features", epochs=1, runs_dir=tmp_path, name="small", **TINY_OPTIONS)
    assert [r.getMessage() for r in caplog.records if "well below" in r.getMessage()] == [
        size.input_size_warning(32, 224)
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="headstart.advice.input_size"):
        fit(tiny, strategy="features", epochs=1, batch_size=8, runs_dir=tmp_path, name="native")
    assert not [r for r in caplog.records if "well below" in r.getMessage() or "under" in r.getMessage()]


def test_advise_cli_shows_the_sizes(striped, two_sizes):
    runner = CliRunner()
    res = runner.invoke(app, ["advise", str(striped)])
    assert res.exit_code == 0, res.output
    assert "Input size" in res.stdout and f"{LARGE} px" in res.stdout and "recommended" in res.stdout
    assert f"--input-size {LARGE}" in res.stdout and "--input-size auto" in res.stdout
    body = json.loads(runner.invoke(app, ["advise", str(striped), "--json", "--sample", "8"]).stdout)
    assert [r["input_size"] for r in body["resolution"]["sizes"]] == [SMALL, LARGE]


def test_input_size_auto_in_the_config():
    assert TrainConfig(input_size="auto").input_size == "auto"
    assert resolve_config(overrides={"input_size": "224"}).input_size == 224  # a flag's text
    assert resolve_config(overrides={"input_size": "auto"}).input_size == "auto"
    with pytest.raises(ConfigError, match=r"or auto .*Received: input_size='big'"):
        resolve_config(overrides={"input_size": "big"})
    res = CliRunner().invoke(app, ["train", "demo", "--input-size", "big"])
    assert res.exit_code == 2 and "or auto" in res.output
