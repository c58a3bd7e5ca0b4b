"""Shared fixtures: the tiny dataset and the runs several tests read, one image cache per test process.

Shared helpers (datasets, broken data, the browser, ports) are in ``tests/helpers/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.datasets import TINY, TINY_OPTIONS, make_food11, make_messy_food11

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup here hangs ~45 s before failing

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # One core a test process (make test runs one per core): torch's own threads would make them contend.
    torch.set_num_threads(1)


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    return make_messy_food11(tmp_path / "messy")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """One decoded-image cache for the whole session, outside the runs and the user's home."""
    os.environ["HEADSTART_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")


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
def demo_run(tmp_path_factory):
    """A features run on the demo data (64 px), shared by the tests that need a model that has
    learnt something: it is the one accuracy claim of the timed suite."""
    from headstart.training.fit import fit

    return fit(
        "demo", strategy="features", epochs=6, input_size=64, runs_dir=tmp_path_factory.mktemp("runs"), name="demo"
    )
