"""Shared fixtures: the tiny dataset and the runs several tests read, one image cache per test process.

Shared helpers (datasets, broken data, the browser, ports) are in ``tests/helpers/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.datasets import TINY, TINY_OPTIONS, make_corner_patch, make_food11, make_messy_food11, make_multilabel

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup here hangs ~45 s before failing

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # One core a test process (make test runs one per core): torch's own threads would make them contend.
    torch.set_num_threads(1)


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    return make_messy_food11(tmp_path / "messy")


def _shared(tmp_path_factory) -> Path:
    """A folder every test process of this session sees (with pytest-xdist each has a folder of its own
    below it): what one process computed, the others read."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """One decoded-image cache for the whole session, outside the runs and the user's home (its own lock
    lets one process build an entry while the others wait)."""
    os.environ["HEADSTART_CACHE"] = str(_shared(tmp_path_factory) / "cache")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return make_food11(tmp_path_factory.mktemp("tiny") / "data", TINY)


@pytest.fixture(scope="session")
def tiny_run(tiny, tmp_path_factory):
    """A finished features run on the tiny data, shared by the tests that only read a run."""
    from headstart.training.fit import fit

    return fit(
        tiny, strategy="features", epochs=2, runs_dir=tmp_path_factory.mktemp("runs"), name="tiny", **TINY_OPTIONS
    )


@pytest.fixture(scope="session")
def toy_run(tiny, tmp_path_factory):
    """A run of timm's smallest test network (random weights): for the mechanics that do not care what the
    model is (a broken export caught), at a fraction of the default backbone's cost."""
    from headstart.training.fit import fit

    return fit(
        tiny,
        backbone="test_efficientnet",
        weights="none",
        strategy="features",
        epochs=1,
        runs_dir=tmp_path_factory.mktemp("runs"),
        name="toy",
        **TINY_OPTIONS,
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A features run on the demo data (64 px), shared by the tests that need a model that has
    learnt something: it is the one accuracy claim of the timed suite. Trained once for all the test
    processes: the first trains it, the others wait and read it."""
    from filelock import FileLock

    from headstart.runs.folder import Run
    from headstart.training.fit import fit

    shared = _shared(tmp_path_factory)
    with FileLock(str(shared / "demo_run.lock")):
        if (shared / "runs" / "demo" / "metrics.json").is_file():
            return Run.load(shared / "runs" / "demo")
        return fit("demo", strategy="features", epochs=6, input_size=64, runs_dir=shared / "runs", name="demo")


@pytest.fixture(scope="session")
def corner_run(tmp_path_factory):
    """A features run on data whose class is the colour of a patch in the top-left corner, the rest noise
    (``helpers.datasets.make_corner_patch``), and that data: what the class-activation maps are checked on.
    Trained once for all the test processes."""
    from filelock import FileLock

    from headstart.runs.folder import Run
    from headstart.training.fit import fit

    shared = _shared(tmp_path_factory) / "corner"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared / "run.lock")):
        if (shared / "runs" / "corner" / "metrics.json").is_file():
            return Run.load(shared / "runs" / "corner"), shared / "data"
        data = make_corner_patch(shared / "data")
        # 128 px: a 4 x 4 last stage, so a corner is a place of its own (at 64 px the stage is 2 x 2)
        opts = dict(strategy="features", epochs=8, input_size=128, batch_size=16, name="corner")
        return fit(data, runs_dir=shared / "runs", **opts), data


@pytest.fixture(scope="session")
def demo_exports(demo_run, tmp_path_factory) -> dict[str, Path]:
    """The demo run exported as ONNX fp32, ONNX int8 and OpenVINO IR, once for all the test processes."""
    from filelock import FileLock

    from headstart.inference.export import export

    out = _shared(tmp_path_factory) / "demo-exports"
    files = {"onnx": out / "model.onnx", "int8": out / "model-int8.onnx", "openvino": out / "model.xml"}
    with FileLock(str(_shared(tmp_path_factory) / "demo_exports.lock")):
        if not all(f.is_file() for f in files.values()):
            export(demo_run.dir, "onnx", files["onnx"])
            export(demo_run.dir, "onnx", files["int8"], "int8", min_agreement=0.9, calibration_images=50)
            export(demo_run.dir, "openvino", files["openvino"])
    return files


@pytest.fixture(scope="session")
def multi_run(tmp_path_factory):
    """A multi-label features run (``helpers.datasets.make_multilabel``: a coloured quarter a label, one to three
    an image; splits drawn) and its manifest. Trained once for all the test processes."""
    from filelock import FileLock

    from headstart.runs.folder import Run
    from headstart.training.fit import fit

    shared = _shared(tmp_path_factory) / "multi"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared / "run.lock")):
        manifest = shared / "data" / "manifest.csv"
        if (shared / "runs" / "multi" / "metrics.json").is_file():
            return Run.load(shared / "runs" / "multi"), manifest
        make_multilabel(shared / "data")
        opts = dict(strategy="features", epochs=8, input_size=64, batch_size=16, name="multi", class_weights="auto")
        return fit(manifest, runs_dir=shared / "runs", **opts), manifest
