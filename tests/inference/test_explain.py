"""Class-activation maps: they point at what decides the class, for every kind of backbone, from Python and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import headstart
from headstart.cli.main import app
from headstart.data.dataset import demo_root
from headstart.errors import ConfigError
from headstart.inference.explain import METHODS, class_maps
from headstart.models.factory import create_model


def _corner_share(cam: np.ndarray) -> float:
    """The share of a map's mass in its top-left quarter (a uniform map: 0.25)."""
    h, w = cam.shape
    return float(cam[: h // 2, : w // 2].sum() / cam.sum())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_the_map_points_at_the_corner_that_decides_the_class(corner_run, method):
    run, data = corner_run
    assert run.metrics["accuracy"] == 1.0
    photos = sorted((data / "red").iterdir())[-5:] + sorted((data / "blue").iterdir())[-5:]
    explained = headstart.load(run.dir).explain(photos, method=method)
    assert [e.label for e in explained] == ["red"] * 5 + ["blue"] * 5
    shares = [_corner_share(e.map) for e in explained]
    # Most of the mass on the corner's quarter; a uniform map gives 0.25, a random one about as much.
    assert np.mean(shares) > 0.45 and min(shares) > 0.35, shares
    assert _corner_share(np.random.default_rng(0).random((128, 128))) < 0.3
    mean = np.mean([e.map for e in explained], 0)
    quarters = [mean[:64, :64].sum(), mean[:64, 64:].sum(), mean[64:, :64].sum(), mean[64:, 64:].sum()]
    assert np.argmax(quarters) == 0


@pytest.mark.parametrize(
    "backbone, size", [("vgg16", 64), ("test_efficientnet", 64), ("test_convnext", 64), ("test_vit", None)]
)
def test_every_kind_of_backbone_gives_a_map_the_size_of_the_image(backbone, size):
    model = create_model(backbone, 3, weights="none", input_size=size)
    side = model.preprocessing.input_size
    images = np.random.default_rng(1).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    for method in METHODS:
        maps = class_maps(model, images, method, classes=[0, 2])
        assert maps.shape == (2, side, side) and maps.dtype == np.float32
        assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind on the weights


def test_explain_from_python_and_the_cli(demo_run, demo_exports, tmp_path: Path):
    photos = sorted((demo_root() / "evaluation").iterdir())[:3]
    model = headstart.load(demo_run.dir)
    explained = model.explain([*photos, tmp_path / "missing.png"])
    predicted = model.predict(photos)
    size = model.preprocessing.input_size
    for e, p in zip(explained, predicted):
        assert [c for c, _ in e.top] == [c for c, _ in p.top]
        assert [q for _, q in e.top] == pytest.approx([q for _, q in p.top], abs=1e-5)
        assert e.map.shape == (size, size) and e.image.shape == (size, size, 3) and e.method == "gradcam"
        assert e.map.max() == pytest.approx(1, abs=1e-5) and e.map.min() == pytest.approx(0, abs=1e-5)
    assert explained[-1].error == "no such file or folder" and explained[-1].map is None

    out = tmp_path / "maps"
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(demo_run.dir),
            *map(str, photos),
            "--explain",
            "--method",
            "gradcam++",
            "--out",
            str(out),
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    answers = json.loads(res.output)["predictions"]
    written = sorted(out.iterdir())
    assert [Path(a["explanation"]).name for a in answers] == [f"{p.stem}-gradcam++.png" for p in photos]
    assert [w.name for w in written] == sorted(f"{p.stem}-gradcam++.png" for p in photos)
    picture = Image.open(written[0])
    assert picture.width > 2.5 * picture.height > 600  # the photo, its map, the bars side by side

    # an exported file cannot explain; --explain and --tta do not go together: exit 2, nothing written
    with pytest.raises(ConfigError, match="exported file"):
        headstart.load(demo_exports["onnx"]).explain(photos)
    for source, flag in ((demo_exports["onnx"], "--explain"), (demo_run.dir, "--tta")):
        args = ["predict", str(source), str(photos[0]), "--explain", flag, "--out", str(tmp_path / "none")]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and ("exported file" in res.output or "--tta" in res.output), res.output
        assert not (tmp_path / "none").exists()


def test_the_report_shows_the_wrong_images_with_their_maps(tiny_run):
    html = tiny_run.report.read_text()
    assert "where the model saw the class it gave" in html
    picture = Image.open(tiny_run.picture("misclassified"))
    assert picture.height > 300  # eight rows: each wrong photo beside its map


def test_maps_asked_at_once_are_each_their_own():
    """A server explains requests in several threads, on one model: a ViT's target layer is the model's own, and
    the library collects every forward pass through it (without the lock, maps came out of other requests)."""
    from concurrent.futures import ThreadPoolExecutor

    model = create_model("test_vit", 3, weights="none")
    side = model.preprocessing.input_size
    rng = np.random.default_rng(2)
    batches = [rng.integers(0, 256, (2, side, side, 3), dtype=np.uint8) for _ in range(4)]
    one_by_one = [class_maps(model, b, "gradcam", [0, 1]) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        at_once = list(pool.map(lambda b: class_maps(model, b, "gradcam", [0, 1]), batches))
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(one_by_one, at_once))
    assert all(p.requires_grad for p in model.parameters())  # switched off for the pass, and back on
