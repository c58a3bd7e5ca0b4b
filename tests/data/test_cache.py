"""The decode-once cache: same pixels as decoding directly, reused, rebuilt when a file changes."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import time
import traceback
from pathlib import Path

import numpy as np

from headstart.data import cache as hs_cache
from headstart.data.cache import decoded_images
from headstart.data.dataset import load_dataset
from headstart.data.images import load_image
from headstart.data.preprocessing import Preprocessing
from helpers.datasets import make_food11, photo

PRE = Preprocessing(input_size=32)


def _counting(monkeypatch) -> list:
    calls = []
    real = hs_cache.decode_image
    monkeypatch.setattr(hs_cache, "decode_image", lambda *a: (calls.append(a[0]), real(*a))[1])
    return calls


def test_pixels_match_direct_decoding_and_broken_images_are_dropped(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    (root / "training" / "1_77.jpg").write_bytes(b"not a jpeg at all")
    ds, store = decoded_images(load_dataset(root), PRE, progress=False, directory=tmp_path / "c")
    assert [p.path.name for p in ds.problems] == ["1_77.jpg"]
    assert len(store) == len(ds.samples) == 24
    for i in (0, 7, 23):
        expected = np.asarray(PRE.resize_image(load_image(ds.samples[i].path)))
        assert np.array_equal(store[i], expected)


def test_second_use_decodes_nothing_and_a_changed_file_rebuilds(tmp_path: Path, monkeypatch):
    root = make_food11(tmp_path / "d")
    calls = _counting(monkeypatch)
    decoded_images(load_dataset(root), PRE, progress=False, directory=tmp_path / "c")
    assert len(calls) == 24
    decoded_images(load_dataset(root), PRE, progress=False, directory=tmp_path / "c")
    assert len(calls) == 24  # from the cache
    target = root / "training" / "0_0.jpg"
    photo(40).save(target)
    os.utime(target, ns=(1, 1))  # a different mtime even within the clock's resolution
    ds, store = decoded_images(load_dataset(root), PRE, progress=False, directory=tmp_path / "c")
    assert len(calls) == 48
    i = [s.path for s in ds.samples].index(target)
    assert np.array_equal(store[i], np.asarray(PRE.resize_image(load_image(target))))
    # Another input size is another cache.
    decoded_images(load_dataset(root), Preprocessing(input_size=24), progress=False, directory=tmp_path / "c")
    assert len(calls) == 72


def test_links_that_lead_nowhere_never_reach_the_cache(tmp_path: Path):
    """A self-referencing or dangling link (any layout) is a problem of the listing, and the cache
    key of a file gone since (a link broken after listing) is made all the same: train never
    stops on a traceback; the image is skipped with its reason, as inspect says."""
    from headstart.data.layouts import Sample
    from helpers.broken_data import add_broken_links
    from helpers.datasets import food11_to_folders

    root = make_food11(tmp_path / "d")
    (root / "classes.txt").write_text("cat\ncoffee\nastronaut\n")
    root = food11_to_folders(root, tmp_path / "folders")
    reasons = add_broken_links(root / "training" / "cat")
    ds, store = decoded_images(load_dataset(root), PRE, progress=False, directory=tmp_path / "c")
    assert {p.path.name: p.reason for p in ds.problems} == reasons
    assert len(store) == len(ds.samples) == 24

    full = load_dataset(root)
    gone = [Sample(root / "training" / "cat" / name, 0, "training") for name in reasons]  # listed, then broken
    key = hs_cache.cache_key(full.samples + gone, PRE)
    assert key != hs_cache.cache_key(full.samples, PRE)
    ds, store = decoded_images(
        dataclasses.replace(full, samples=full.samples + gone), PRE, progress=False, directory=tmp_path / "c"
    )
    assert {p.path.name: p.reason for p in ds.problems} == reasons
    assert len(store) == len(ds.samples) == 24


def _build(root: str, directory: str) -> bytes:
    _, store = decoded_images(load_dataset(root), PRE, progress=False, directory=Path(directory))
    return np.stack([store[i] for i in range(len(store))]).tobytes()


def _build_together(root: str, directory: str, barrier, results) -> None:
    """A worker process: start building the cache at the same moment as the other worker, each
    decode slowed down so that the build takes a while; report when it started and ended, and how
    many images this process decoded itself."""
    try:
        real, decoded = hs_cache.decode_image, []

        def decode(*args):
            decoded.append(args[0])
            time.sleep(0.02)  # 60 images: a build of over a second, long enough to be waited for
            return real(*args)

        hs_cache.decode_image = decode  # this process only: it is its own
        barrier.wait(timeout=60)
        start = time.time()
        pixels = _build(root, directory)
        results.put((start, time.time(), len(decoded), pixels))
    except BaseException:
        results.put(traceback.format_exc())


def test_two_processes_at_once_one_builds_the_other_waits(tmp_path: Path):
    root = make_food11(tmp_path / "d", {"training": [20, 20], "validation": [5, 5], "evaluation": [5, 5]})
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_build_together, args=(str(root), str(tmp_path / "c"), barrier, results)) for _ in range(2)
    ]
    for w in workers:
        w.start()
    try:
        got = [results.get(timeout=120) for _ in workers]
    except queue.Empty:
        got = ["a worker sent nothing back"]
    finally:
        for w in workers:
            w.join(30)
            if w.is_alive():
                w.kill()
    errors = [g for g in got if isinstance(g, str)]
    assert not errors, errors[0]
    (start_a, end_a, decoded_a, a), (start_b, end_b, decoded_b, b) = sorted(got, key=lambda g: g[2])
    # Both asked at once; one decoded every image, the other decoded none: it waited for the lock
    # while the build ran, then read the finished cache.
    assert (decoded_a, decoded_b) == (0, 60)
    assert start_a < end_b <= end_a + 0.5
    assert a == b == _build(str(root), str(tmp_path / "c"))
    leftovers = [p.name for p in (tmp_path / "c" / "images").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert len(list((tmp_path / "c" / "images").glob("*.npy"))) == 1


def test_a_killed_builds_leftovers_are_cleaned_by_the_next_build(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    ds = load_dataset(root)
    images = tmp_path / "c" / "images"
    images.mkdir(parents=True)
    key = hs_cache.cache_key(ds.samples, PRE)
    stale = [images / f".{key}.4242.deadbeef.npy", images / f".{key}.4242.deadbeef.json"]
    for f in stale:
        f.write_bytes(b"half written")
    decoded_images(ds, PRE, progress=False, directory=tmp_path / "c")
    assert not any(f.exists() for f in stale)
    assert sorted(p.suffix for p in images.iterdir() if p.stem == key) == [".json", ".lock", ".npy"]


def test_an_unusable_cache_folder_or_a_full_disk_is_a_clear_error_before_decoding(tmp_path: Path, monkeypatch):
    import pytest

    from headstart.errors import HeadstartError

    root = make_food11(tmp_path / "d")
    calls = _counting(monkeypatch)
    a_file = tmp_path / "cache-file"
    a_file.write_text("")
    with pytest.raises(HeadstartError, match="decoded-image cache \\(HEADSTART_CACHE\\) .* is a file, not a folder"):
        decoded_images(load_dataset(root), PRE, progress=False, directory=a_file)
    monkeypatch.setattr(hs_cache.shutil, "disk_usage", lambda p: type("Usage", (), {"free": 10_000})())
    with pytest.raises(HeadstartError, match="needs 0.0 GB in .* which has 0.0 GB free.*smaller --input-size"):
        decoded_images(load_dataset(root), PRE, progress=False, directory=tmp_path / "c")
    assert calls == [] and [p.name for p in (tmp_path / "c" / "images").iterdir() if p.suffix != ".lock"] == []
