"""headstart prepare: a dataset as LitData shards, each image once at the input size, resumable, never taken for
finished half-written; read back by index (local folder, or local: standing in for a bucket) and inspected."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.data import shard_writer as W
from headstart.data import shards as S
from headstart.data.cache import decoded_images
from headstart.data.dataset import load_dataset
from headstart.data.inspection import inspect_dataset
from headstart.errors import DataError
from headstart.preparing import prepare
from helpers.datasets import TINY, TINY_IMAGES, make_food11


@pytest.fixture(scope="module")
def prepared(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "tiny-32"
    prepare(tiny, out, input_size=32, workers=2)
    return out


def _by_name(ds):
    return {str(s.path.relative_to(ds.root)): i for i, s in enumerate(ds.samples)}


def test_prepare_writes_each_image_once_at_the_input_size_as_the_decode_cache_has_it(tiny, prepared):
    meta = json.loads((prepared / S.MANIFEST).read_text())
    assert not (prepared / S.PARTIAL).exists()
    assert meta["preprocessing"] == {"input_size": 32, "resize": "squash", "interpolation": "bilinear"}
    assert meta["task"] == "single" and meta["layout"] == "food11" and meta["problems"] == []
    assert {k: len(v["names"]) for k, v in meta["splits"].items()} == {k: sum(v) for k, v in TINY.items()}
    index = json.loads((prepared / "training" / "index.json").read_text())
    assert sum(c["chunk_size"] for c in index["chunks"]) == sum(TINY["training"])  # each image once
    assert meta["bytes"] == sum(f.stat().st_size for f in prepared.rglob("*.bin"))
    # Training is written shuffled (LitData shuffles shards and windows, not a listing sorted by class).
    labels = meta["splits"]["training"]["labels"]
    assert labels != sorted(labels) and Counter(labels) == dict(enumerate(TINY["training"]))
    # The pixels are the decode-once cache's, image for image, whether read as a folder or through the cache.
    files = load_dataset(tiny)
    for data in (str(prepared), f"local:{prepared}"):
        ds = load_dataset(data)
        assert ds.stream is not None and ds.classes == files.classes and ds.counts() == files.counts()
        _, store = decoded_images(ds, ds.stream.preprocessing)
        _, cache = decoded_images(files, ds.stream.preprocessing)
        where = _by_name(files)
        for i, s in enumerate(ds.samples):
            j = where[str(s.path)]
            assert s.label == files.samples[j].label and s.split == files.samples[j].split
            assert np.array_equal(store[i], cache[j])
    assert any((Path(S.cache_dir()) / "streams").rglob("*.bin"))  # local: streamed through the local cache


def test_a_second_prepare_of_the_same_data_does_nothing_and_other_data_is_refused(tiny, prepared, tmp_path):
    before = {f: f.stat().st_mtime_ns for f in prepared.rglob("*.bin")}
    prepare(tiny, prepared, input_size=32)
    assert before == {f: f.stat().st_mtime_ns for f in prepared.rglob("*.bin")}
    with pytest.raises(DataError, match="already holds prepared data"):
        prepare(tiny, prepared, input_size=48)
    with pytest.raises(DataError, match="prepared data already"):
        prepare(prepared, tmp_path / "again", input_size=32)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="folder with files in it"):
        prepare(tiny, tmp_path / "full", input_size=32)


def test_an_interrupted_prepare_is_refused_and_finished_by_running_it_again(tiny, prepared, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    write = W._write_split
    written = []

    def stop_after_one(listing, *args, **kw):
        if written:
            raise KeyboardInterrupt  # Ctrl-C while the second split is written
        write(listing, *args, **kw)
        written.append(listing[0].split)

    monkeypatch.setattr(W, "_write_split", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny, out, input_size=32, workers=1)
    assert (out / S.PARTIAL).is_file() and not (out / S.MANIFEST).exists() and written == ["training"]
    for data in (str(out), f"local:{out}"):
        with pytest.raises(DataError, match="did not finish"):
            load_dataset(data)
    first = {f: f.stat().st_mtime_ns for f in (out / "training").iterdir()}
    monkeypatch.setattr(W, "_write_split", write)
    prepare(tiny, out, input_size=32, workers=1)
    assert {f: f.stat().st_mtime_ns for f in (out / "training").iterdir()} == first  # not written twice
    assert not (out / S.PARTIAL).exists()
    a, b = (json.loads((p / S.MANIFEST).read_text()) for p in (out, prepared))
    assert a["fingerprint"] == b["fingerprint"]  # as one run without a stop (its shards cut otherwise: 2 workers)
    for split in ("training", "validation", "evaluation"):
        assert {k: v for k, v in a["splits"][split].items() if k != "bytes"} == {
            k: v for k, v in b["splits"][split].items() if k != "bytes"
        }


def test_broken_images_are_left_out_and_listed(tmp_path):
    data = make_food11(tmp_path / "data", TINY)
    (data / "training" / "1_99.jpg").write_bytes(b"not a jpeg at all")
    shards = prepare(data, tmp_path / "out", input_size=32, workers=1)
    assert [Path(p["path"]).name for p in shards.meta["problems"]] == ["1_99.jpg"]
    ds = load_dataset(tmp_path / "out")
    assert len(ds.samples) == TINY_IMAGES and len(ds.problems) == 1
    _, store = decoded_images(ds, ds.stream.preprocessing)
    assert all(store[i].shape == (32, 32, 3) for i in range(len(store)))  # every item where the manifest says


def test_a_manifest_is_checked_before_it_is_believed(prepared, tmp_path):
    for change, match in (
        (lambda m: m.update(format=99), "format 99"),
        (lambda m: m["splits"]["training"]["labels"].__setitem__(0, 7), "names no class"),
        (lambda m: m["splits"]["evaluation"]["names"].pop(), "differ in length"),
        (lambda m: m.update(preprocessing={"input_size": 32, "resize": "squash", "interpolation": "magic"}), "magic"),
        (lambda m: m.update(classes=[]), "class names"),
    ):
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(prepared, copy)
        meta = json.loads((copy / S.MANIFEST).read_text())
        change(meta)
        (copy / S.MANIFEST).write_text(json.dumps(meta))
        with pytest.raises(DataError, match=match):
            load_dataset(copy)
    (copy / S.MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="not JSON"):
        load_dataset(copy)


def test_urls_name_the_bucket_and_a_bounded_cache(prepared, monkeypatch, tmp_path):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    assert S.is_url("s3://bucket/x") and S.is_url("gs://b/x") and S.is_url("local:/x") and not S.is_url("/x")
    shards = S.open_shards(f"local:{prepared}/", cache_gb=0.002)
    options = shards.stream_options("training")
    assert options["input_dir"] == f"local:{prepared}/training"
    assert Path(options["cache_dir"]).is_relative_to(tmp_path / "cache" / "streams")
    share = shards.meta["splits"]["training"]["bytes"] / shards.meta["bytes"]
    assert options["max_cache_size"] == f"{max(int(2 * share), 1)}MB"  # the splits share --stream-cache-gb
    assert S.open_shards(str(prepared)).stream_options("training") == {"input_dir": f"{prepared}/training"}
    with pytest.raises(DataError, match="no prepared data there"):
        load_dataset(f"local:{tmp_path}")
    with pytest.raises(DataError, match="a URL of a kind headstart does not stream from.*s3://"):
        load_dataset("https://example.com/photos")
    with pytest.raises(DataError, match="stream-cache-gb"):
        S.open_shards(str(prepared), cache_gb=0)


def test_a_model_that_reads_other_pixels_is_refused(prepared):
    from headstart.data.preprocessing import Preprocessing

    ds = load_dataset(prepared)
    with pytest.raises(DataError, match=r"prepared at 32 px .* --input-size 32"):
        decoded_images(ds, Preprocessing(input_size=64))
    with pytest.raises(DataError, match="--exclude"):
        load_dataset(prepared, exclude=prepared / "x.csv")
    with pytest.raises(DataError, match="--task auto"):
        load_dataset(prepared, task="multi")


def test_inspect_reads_the_manifest_and_draws_from_the_shards(tiny, prepared, tmp_path):
    a = inspect_dataset(tiny, tmp_path / "files", progress=False)
    b = inspect_dataset(f"local:{prepared}", tmp_path / "shards", progress=False)
    assert (a.counts, a.sizes, a.modes, a.imbalance) == (b.counts, b.sizes, b.modes, b.imbalance)
    assert (tmp_path / "shards" / "samples.png").stat().st_size > 1000


def test_the_cli_prepares_and_refuses_with_exit_2(tiny, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", str(tiny), "--out", str(tmp_path / "s"), "--input-size", "32"])
    assert result.exit_code == 0, result.output
    assert "training 24, validation 9, evaluation 9 images of 3 classes" in " ".join(result.output.split())
    result = runner.invoke(app, ["prepare", str(tiny), "--out", str(tmp_path / "s"), "--input-size", "48"])
    assert result.exit_code == 2 and "already holds prepared data" in result.output
    result = runner.invoke(app, ["inspect", f"local:{tmp_path / 's'}", "--out", str(tmp_path / "i")])
    assert result.exit_code == 0 and "Training data available in 3 classes" in result.output


def test_advise_measures_the_shards_at_the_size_they_hold(prepared):
    from headstart.advice.strategy import advise

    advice = advise(f"local:{prepared}", per_class=4)
    assert advice.measurements["input_size"] == 32 and advice.resolution is None  # no other size probed
    assert advice.measurements["training_images"] == sum(TINY["training"])
    assert advice.recommendation["strategy"] in ("features", "half", "full")


def test_multi_label_data_is_prepared_with_every_label_and_streams_multi_hot_targets(tmp_path):
    from headstart.data.dataset import split_indices
    from headstart.data.image_set import streamed_images
    from helpers.datasets import make_multilabel

    manifest = make_multilabel(tmp_path / "multi", n=30, size=32)
    files = load_dataset(manifest)
    prepare(manifest, tmp_path / "shards", input_size=32, workers=1)
    ds = load_dataset(tmp_path / "shards")
    assert ds.task == "multi" and ds.classes == files.classes
    labels = {str(s.path.relative_to(files.root)): s.label for s in files.samples}
    assert all(isinstance(s.label, tuple) and s.label == labels[str(s.path)] for s in ds.samples)
    targets = dict(zip(split_indices(ds)["training"][0], split_indices(ds)["training"][1]))
    images = streamed_images(ds.stream, "training", False, 0, ds.num_classes, drop_last=False)
    train = ds.split("training")
    for k in range(len(images)):
        x, y = images[k]
        assert y.shape == (3,) and y.dtype == torch.float32
        assert np.array_equal(y.numpy(), targets[ds.samples.index(train[k])])  # the manifest's written order
