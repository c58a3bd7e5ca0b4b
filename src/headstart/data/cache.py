"""Decode once: every image decoded and resized one time, kept as uint8 in a memory-mapped file.

The tutorial loads every image into memory as float32 (about 6 GB for Food-11) each time it
runs. Here the decoded, resized pixels of a dataset are written once to
``<cache dir>/images/<key>.npy`` and memory-mapped by every run and strategy after that: memory
stays bounded by the pages in use, not by the dataset's size.

The key covers each file's identity (path, size, modification time) and the target size and
resize method, so a changed file means a new cache. One process builds it while the others wait
(a file lock), and files are written under a temporary name and renamed into place, so nobody
ever reads half a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock

from headstart.data.dataset import Dataset, check_splits
from headstart.data.images import MAX_PIXELS, decode_image
from headstart.data.layouts import Problem, Sample
from headstart.data.preprocessing import Preprocessing
from headstart.errors import DataError, ImageError
from headstart.utils.files import cache_dir, check_writable_dir
from headstart.utils.progress import track

log = logging.getLogger(__name__)


def cache_key(samples: list[Sample], pre: Preprocessing) -> str:
    h = hashlib.sha256()
    version = "v2|" if pre.resize == "center_crop" else ""  # v2: center_crop crops the source first
    h.update(f"{version}{pre.input_size}|{pre.resize}|{pre.interpolation}".encode())
    for s in samples:
        try:
            st = s.path.stat()
            identity = f"{st.st_size}|{st.st_mtime_ns}"
        except (OSError, ValueError):  # gone since it was listed: the build finds why, and skips it
            identity = "unreadable"
        h.update(f"\n{s.path}|{identity}".encode("utf-8", "surrogateescape"))  # any name the system allows
    return h.hexdigest()[:24]


def _build(samples: list[Sample], pre: Preprocessing, npy: Path, index: Path, progress: bool) -> None:
    size = pre.input_size
    need, free = len(samples) * size * size * 3, shutil.disk_usage(npy.parent).free
    if need > free:
        raise DataError(
            f"Decoding {len(samples)} images at {size} px needs {need / 1e9:.1f} GB in {npy.parent}, which "
            f"has {free / 1e9:.1f} GB free. Free some space, point HEADSTART_CACHE at a bigger disk, or "
            "use a smaller --input-size."
        )
    for stale in npy.parent.glob(f".{npy.stem}.*"):  # left by a build that was killed (we hold the lock)
        stale.unlink(missing_ok=True)
    tmp = npy.with_name(f".{npy.stem}.{os.getpid()}.{os.urandom(4).hex()}.npy")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(samples), size, size, 3))

    def work(i: int) -> str | None:
        try:
            image, _ = decode_image(samples[i].path, MAX_PIXELS)
        except ImageError as e:
            return str(e)
        array[i] = np.asarray(pre.resize_image(image), dtype=np.uint8)
        return None

    try:
        # Pillow releases the GIL while decoding and resizing: threads work in parallel.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            errors = list(track(pool.map(work, range(len(samples))), len(samples), "Decoding images (once)", progress))
        array.flush()
        tmp_index = index.with_name(tmp.stem + ".json")
        tmp_index.write_text(json.dumps({"paths": [str(s.path) for s in samples], "errors": errors}))
        os.replace(tmp, npy)  # the index last: a reader that finds it finds a whole array
        os.replace(tmp_index, index)
    finally:
        tmp.unlink(missing_ok=True)


class ImageStore:
    """Decoded images by sample index: ``store[i]`` is sample i's (size, size, 3) uint8 pixels."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, key: str = ""):
        # key: the cache's (``cache_key``); "" for an array of one's own
        self.array, self.rows, self.key = array, rows, key
        self.size = array.shape[1]  # the images' side, in pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[self.rows[i]]


def decoded_images(
    ds: Dataset, pre: Preprocessing, *, progress: bool = True, directory: Path | None = None, check: bool = True
) -> tuple[Dataset, ImageStore]:
    """The dataset without broken images, and the decoded pixels of each of its samples.

    Broken images are dropped and listed in ``problems`` with their reason (and a warning), as
    ``verify_images`` does; the cache remembers them, so they are not decoded again either. Then
    the splits are checked again (``check``; a sample of some splits only is not checked).
    Prepared data (``ds.stream``) was decoded when it was prepared: its images come from its shards
    (``headstart.data.shards.ShardStore``), if they were resized as ``pre`` says.
    """
    if ds.stream is not None:
        return ds, ds.stream.store(ds.samples, pre)
    root = check_writable_dir(directory or cache_dir(), "The decoded-image cache (HEADSTART_CACHE)") / "images"
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(ds.samples, pre)
    npy, index = root / f"{key}.npy", root / f"{key}.json"
    if not (index.exists() and npy.exists()):
        # One process per machine builds (several ranks of a distributed run, two runs at once);
        # the others wait for the lock, then find the whole cache (the index is written last).
        with FileLock(root / f"{key}.lock"):
            if not (index.exists() and npy.exists()):
                _build(ds.samples, pre, npy, index, progress)
    log.info("decoded images from the cache %s", npy)
    errors = json.loads(index.read_text())["errors"]
    array = np.load(npy, mmap_mode="r")
    bad = [Problem(s.path, e) for s, e in zip(ds.samples, errors) if e]
    rows = np.array([i for i, e in enumerate(errors) if not e], dtype=np.int64)
    if bad:
        ds = ds.without(bad)
        if check:
            check_splits(ds)
    return ds, ImageStore(array, rows, key)
