"""Training on prepared shards (``headstart prepare``), a local folder standing in for the bucket (``local:``):
the accuracy of the file path, each rank its share reshuffled every epoch, the frozen pass once in total across
ranks, a run stopped by Ctrl-C in the middle of an epoch resumed as if it never stopped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from headstart.data.dataset import load_dataset
from headstart.data.image_set import streamed_images
from headstart.preparing import prepare
from headstart.training.fit import fit
from helpers.datasets import TINY, TINY_OPTIONS
from helpers.ports import free_port_env
from helpers.training import StopMidEpoch


@pytest.fixture(scope="module")
def tiny_shards(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "tiny-32"
    prepare(tiny, out, input_size=32, workers=1)
    return out


def test_the_demo_shards_learn_what_the_files_do_on_one_rank_and_two(demo_run, tmp_path):
    shards = prepare("demo", tmp_path / "demo-64", input_size=64, workers=2)
    bucket = f"local:{shards.location}"  # read as a bucket is: through a local cache, here smaller than the data
    one = fit(bucket, strategy="features", epochs=6, runs_dir=tmp_path / "runs", name="one", stream_cache_gb=0.01)
    assert one.config.input_size == 64  # the size the shards were prepared at, unasked
    command = [sys.executable, "-m", "headstart", "train", bucket, "--strategy", "features", "--epochs", "6"]
    command += ["--accelerator", "cpu", "--devices", "2", "--runs-dir", str(tmp_path / "runs"), "--name", "two"]
    two = subprocess.run([*command, "--stream-cache-gb", "0.01"], capture_output=True, text=True, env=free_port_env())
    assert two.returncode == 0, two.stderr[-3000:]
    two = json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())
    # The same pixels and seed; only the order training lists its images in differs (the shards' shuffled one).
    for metrics in (one.metrics, two):
        assert metrics["total"] == demo_run.metrics["total"] == 300
        assert metrics["accuracy"] == pytest.approx(demo_run.metrics["accuracy"], abs=0.01)
    data = json.loads((one.dir / "data.json").read_text())
    assert data["root"] == bucket and data["counts"] == load_dataset("demo").counts()


def test_every_epoch_reshuffles_and_each_rank_streams_its_own_share(tiny_shards):
    from litdata import StreamingDataLoader
    from litdata.utilities.env import _DistributedEnv

    ds = load_dataset(tiny_shards)
    n = sum(TINY["training"])

    def epochs(rank: int, world: int, count: int = 2) -> list[list[int]]:
        images = streamed_images(ds.stream, "training", True, 0, ds.num_classes, drop_last=False)
        images.distributed_env = _DistributedEnv(world, rank, 1)
        loader = StreamingDataLoader(images, batch_size=4)
        seen = []
        for _ in range(count):
            seen.append([int(y) for _, labels in loader for y in labels])
        return seen, images

    (first, second), _ = epochs(0, 1)
    assert sorted(first) == sorted(second) == sorted(s.label for s in ds.split("training"))
    assert first != second  # reshuffled
    shares = [epochs(r, 2, 1)[0][0] for r in (0, 1)]
    assert len(shares[0]) + len(shares[1]) == n and Counter(shares[0]) + Counter(shares[1]) == Counter(first)
    # Augmented as ImageSet augments: image i of the split in epoch e from its own seed, whichever rank reads it.
    x, _ = streamed_images(ds.stream, "training", True, 0, ds.num_classes, False)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_ctrl_c_mid_epoch_resumes_where_the_stream_was(tiny_shards, tmp_path):
    options = dict(strategy="full", epochs=3, early_stopping=0, runs_dir=tmp_path, **TINY_OPTIONS)
    whole = fit(tiny_shards, name="whole", **options)
    cut = fit(tiny_shards, name="cut", callbacks=[StopMidEpoch(epoch=1, batch=2)], **options)
    assert cut.interrupted and len(cut.history) == 1
    saved = torch.load(cut.dir / "checkpoints" / "last.ckpt", weights_only=False)
    place = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert place["num_samples_yielded"] == 2 * 8  # the two batches trained, not the one fetched ahead
    resumed = fit(resume=cut.dir)
    assert len(resumed.history) == 3
    for a, b in zip(whole.history, resumed.history):  # each image of the cut epoch once, in the same order
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (key, a, b)
    assert resumed.metrics["correct"] == whole.metrics["correct"]


def test_two_ranks_compute_the_frozen_pass_once_and_stream_their_shares(tiny_shards, tmp_path):
    command = [sys.executable, "-m", "headstart", "--verbose", "train", f"local:{tiny_shards}", "--accelerator"]
    command += ["cpu", "--devices", "2", "--runs-dir", str(tmp_path), "--batch-size", "8", "--epochs", "2"]
    command += ["--stream-cache-gb", "0.01"]
    env = {**free_port_env(), "HEADSTART_CACHE": str(tmp_path / "cache")}  # nothing computed earlier, kept
    features = subprocess.run(
        [*command, "--name", "f", "--strategy", "features"], capture_output=True, text=True, env=env
    )
    assert features.returncode == 0, features.stderr[-3000:]
    computed = re.findall(r"frozen pass, (\w+): rank (\d) of 2 computed (\d+) of (\d+) images", features.stderr)
    per_split = {split: {} for split in TINY}
    for split, rank, k, n in computed:
        per_split[split][int(rank)] = (int(k), int(n))
    for split, ranks in per_split.items():  # each image once in total: the ranks' blocks add up to the split
        assert set(ranks) == {0, 1} and ranks[0][0] + ranks[1][0] == ranks[0][1] == sum(TINY[split]), computed
    full = subprocess.run(
        [*command, "--name", "full", "--strategy", "full", "--input-size", "32"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert full.returncode == 0, full.stderr[-3000:]
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["total"] == sum(TINY["evaluation"])
    assert "Number of correctly identified images" in full.stdout


def test_the_features_are_written_beside_the_shards_and_another_machine_streams_them(tiny, tmp_path, monkeypatch):
    shards = prepare(tiny, tmp_path / "tiny", input_size=32, workers=1)  # shards of its own: nothing beside yet
    options = dict(strategy="features", epochs=2, runs_dir=tmp_path / "runs", **TINY_OPTIONS)
    first = fit(f"local:{shards.location}", name="first", **options)
    assert "streamed" not in first.metrics["frozen_pass"]
    beside = sorted(p.name for p in (tmp_path / "tiny" / "features").iterdir())
    assert len(beside) == 3  # one a split
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "another-machine"))  # nothing kept on this disk
    second = fit(f"local:{shards.location}", name="second", **options)
    assert second.metrics["frozen_pass"]["streamed"] is True
    assert second.metrics["correct"] == first.metrics["correct"]
    assert [r["loss"] for r in second.history] == pytest.approx([r["loss"] for r in first.history], abs=1e-6)
