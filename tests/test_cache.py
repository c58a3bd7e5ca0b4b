"""The decode-once cache: same pixels as decoding directly, reused, rebuilt when a file changes."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from conftest import make_food11, photo
from headstart import cache as hs_cache
from headstart.cache import decoded_images
from headstart.data import load_dataset, load_image
from headstart.weights import Preprocessing

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


def _build(root: str, directory: str) -> bytes:
    _, store = decoded_images(load_dataset(root), PRE, progress=False, directory=Path(directory))
    return np.stack([store[i] for i in range(len(store))]).tobytes()


def test_two_processes_building_at_once_agree(tmp_path: Path):
    root = make_food11(tmp_path / "d", {"training": [20, 20], "validation": [5, 5], "evaluation": [5, 5]})
    with mp.get_context("spawn").Pool(2) as pool:
        a, b = pool.starmap(_build, [(str(root), str(tmp_path / "c"))] * 2)
    assert a == b == _build(str(root), str(tmp_path / "c"))
    leftovers = [p.name for p in (tmp_path / "c" / "images").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert len(list((tmp_path / "c" / "images").glob("*.npy"))) == 1
