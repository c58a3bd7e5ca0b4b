"""Prepared data: a dataset written once as LitData shards (``headstart prepare``), streamed by every rank.

A dataset bigger than one machine's disk lives in object storage; each rank streams its share of it with
LitData's ``StreamingDataset``, keeping a bounded local cache of shards. ``headstart.data.shard_writer`` writes
every image once, decoded and resized as the model reads it (uint8 at the input size: the decode-once cache's pixels, so
training reads no JPEG; docs/benchmarks.md, "Streaming from shards", measures the JPEG-bytes alternative).

A prepared dataset, in a local folder or at a URL (``s3://``, ``gs://``, ``azure://``, ``local:`` ...)::

    headstart.json              classes, task, preprocessing, each split's samples: written last
    training/ validation/ evaluation/    one LitData dataset a split (index.json, chunk-*.bin)

An item is ``{"index": its place in the split's listing, "label": class id (multi-label: an array of ids),
"image": (size, size, 3) uint8}``. While ``prepare`` writes, ``headstart.partial.json`` says so: a folder
with it and without ``headstart.json`` is unfinished, refused as DATA, and finished by running ``prepare``
again (LitData's checkpoints resume each split where it stopped).

>>> shards = open_shards("s3://bucket/food-224")            # doctest: +SKIP
>>> shards.preprocessing.input_size, len(shards.meta["splits"]["training"]["names"])   # doctest: +SKIP
(224, 9866)
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from headstart.data.images import ImageInfo
from headstart.data.layouts import SPLITS, Sample
from headstart.data.preprocessing import Preprocessing
from headstart.errors import DataError, HeadstartError
from headstart.utils.files import cache_dir, write_text

log = logging.getLogger(__name__)

MANIFEST = "headstart.json"  # written last: prepared data is finished when it is there
PARTIAL = "headstart.partial.json"  # while prepare writes
FORMAT = 1
# Object stores LitData streams from; local: is a folder read as a bucket would be (through the cache).
URL_SCHEMES = ("s3://", "gs://", "azure://", "r2://", "hf://", "local:")
CHUNK_BYTES = "64MB"  # LitData's advice: big enough to stream well, small enough to cache a few
DEFAULT_CACHE_GB = 50.0  # --stream-cache-gb: the most a machine keeps of streamed shards
# What of the preprocessing the stored pixels depend on.
RESIZED = ("input_size", "resize", "interpolation")


def is_url(data: Any) -> bool:
    return isinstance(data, str) and data.startswith(URL_SCHEMES)


def is_prepared(data: Any) -> bool:
    """Whether DATA names prepared shards: a URL, or a folder ``headstart prepare`` wrote (or began to)."""
    if is_url(data):
        return True
    path = Path(str(data)).expanduser()
    return path.is_dir() and ((path / MANIFEST).is_file() or (path / PARTIAL).is_file())


def writable(location: str) -> str:
    """Where LitData writes ``location``: a ``local:`` folder as the folder (it reads, but does not write, local:)."""
    local = local_path(location)
    return str(local) if local is not None else location


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def local_path(location: str) -> Path | None:
    """The folder behind a location that is on this machine's disk (``local:`` included); None for a bucket."""
    if location.startswith("local:"):
        return Path(location[len("local:") :])
    return None if is_url(location) else Path(location).expanduser()


# --- small files beside the shards ----------------------------------------------------------------


def read_json(location: str, name: str) -> dict | None:
    local = local_path(location)
    try:
        if local is not None:
            text = (local / name).read_text()
        else:
            from litdata.streaming.downloader import get_downloader

            with tempfile.TemporaryDirectory() as tmp:
                get_downloader(location, tmp, []).download_file(join(location, name), f"{tmp}/{name}")
                text = Path(tmp, name).read_text()
    except FileNotFoundError:
        return None
    except Exception as e:  # a bucket that does not answer, credentials refused
        if "NoSuchKey" in repr(e) or "404" in str(e) or "Not Found" in str(e):
            return None
        raise DataError(
            f"Cannot read {join(location, name)}: {type(e).__name__}: {e}. Check the URL and the credentials "
            "(docs/distributed.md, 'Data in object storage')."
        ) from None
    try:
        found = json.loads(text)
    except ValueError as e:
        raise DataError(f"{join(location, name)} is not JSON ({e}): prepare the data again.") from None
    if not isinstance(found, dict):
        raise DataError(f"{join(location, name)} is not a headstart manifest: prepare the data again.")
    return found


def write_json(location: str, name: str, value: dict) -> None:
    text = json.dumps(value) + "\n"  # one line: a manifest lists every image
    local = local_path(location)
    if local is not None:
        write_text(local / name, text)
        return
    from litdata.streaming.fs_provider import _get_fs_provider

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, name).write_text(text)
        _get_fs_provider(location).upload_file(f"{tmp}/{name}", join(location, name))


def delete(location: str, name: str) -> None:
    local = local_path(location)
    if local is not None:
        (local / name).unlink(missing_ok=True)
        return
    from litdata.streaming.fs_provider import _get_fs_provider

    _get_fs_provider(location).delete_file_or_directory(join(location, name))


class _CacheAdvice(logging.Filter):
    """LitData advises a cache of 25 GB or more whenever it is smaller: --stream-cache-gb is asked for on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "max_cache_size" not in record.getMessage()


def quiet_litdata() -> None:
    logger = logging.getLogger("litdata.streaming.dataset")
    if not any(isinstance(f, _CacheAdvice) for f in logger.filters):
        logger.addFilter(_CacheAdvice())


# --- reading --------------------------------------------------------------------------------------


@dataclass
class Shards:
    """Prepared data at ``location``: its manifest, and where and how much of it this machine caches."""

    location: str
    meta: dict
    cache_gb: float = DEFAULT_CACHE_GB

    @property
    def preprocessing(self) -> Preprocessing:
        """How the images were resized (``RESIZED``; normalising is the model's own, and not stored)."""
        return Preprocessing(**self.meta["preprocessing"])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def samples(self) -> list[Sample]:
        """Every sample, split by split in the manifest's order; a sample's path is its name in the source."""
        multi = self.meta["task"] == "multi"
        return [
            Sample(PurePosixPath(n), tuple(y) if multi else y, split)
            for split in SPLITS
            for n, y in zip(self.meta["splits"][split]["names"], self.meta["splits"][split]["labels"])
        ]

    def image_infos(self) -> list[ImageInfo]:
        """What each image was before it was resized (``headstart inspect`` reports it), as ``samples()``."""
        return [
            ImageInfo(PurePosixPath(n), w, h, m, f)
            for split in SPLITS
            for n, (w, h), m, f in zip(*(self.meta["splits"][split][k] for k in ("names", "sizes", "modes", "formats")))
        ]

    def stream_options(self, split: str) -> dict:
        """What LitData's ``StreamingDataset`` takes to stream one split: from a bucket, through a cache of at most
        ``cache_gb`` (shared out among the splits by their size) under the headstart cache folder."""
        url = join(self.location, split)
        if not is_url(url):
            return {"input_dir": url}
        share = max(self.meta["splits"][split]["bytes"], 1) / max(self.meta["bytes"], 1)
        where = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        return {
            "input_dir": url,
            "cache_dir": str(cache_dir() / "streams" / where / split),
            "max_cache_size": f"{max(int(self.cache_gb * share * 1000), 1)}MB",
        }

    def store(self, samples: list[Sample], pre: Preprocessing) -> "ShardStore":
        """The images of ``samples`` (some of this data's), read from the shards by index; a DataError when
        they were resized otherwise than ``pre`` (another backbone or input size)."""
        have = self.preprocessing
        if any(getattr(have, k) != getattr(pre, k) for k in RESIZED):
            raise DataError(
                f"{self.location} was prepared at {have.input_size} px ({have.resize}, {have.interpolation}); this "
                f"model reads {pre.input_size} px ({pre.resize}, {pre.interpolation}). Train with --input-size "
                f"{have.input_size} and a backbone that resizes the same way, or prepare the data again with this "
                f"run's --backbone and --input-size {pre.input_size}."
            )
        return ShardStore(self, samples)


def read_features(shards: Shards, key: str) -> tuple[np.ndarray, dict] | None:
    """The features ``write_features`` wrote under ``key``, streamed in order, and what computed them; or None."""
    url = join(shards.location, "features", key)
    about = read_json(url, "about.json")
    if about is None:
        return None
    from litdata import StreamingDataset

    quiet_litdata()
    options = {**shards.stream_options("training"), "input_dir": url}
    if "cache_dir" in options:  # a bucket: a cache folder of their own, beside the training images'
        options["cache_dir"] += "-features"
    stream = StreamingDataset(**options)
    if len(stream) != about.get("rows"):
        return None
    rows = np.stack([stream[i]["row"] for i in range(len(stream))])
    log.info("frozen features streamed from %s: not computed again", url)
    return rows, {k: v for k, v in about.items() if k != "rows"}


def open_shards(data: str, cache_gb: float | None = None) -> Shards:
    """The prepared data at ``data`` (a folder or URL), its manifest checked; a DataError when it is not
    prepared data, or not finished."""
    location = data.rstrip("/") if is_url(data) else str(Path(data).expanduser().resolve())
    meta = read_json(location, MANIFEST)
    if meta is None:
        if read_json(location, PARTIAL) is not None:
            raise DataError(
                f"{data}: headstart prepare began writing here and did not finish. Run the same prepare command "
                "again to finish it."
            )
        raise DataError(f"{data}: no prepared data there ({MANIFEST} is missing). Write it with: headstart prepare")
    _check_manifest(meta, location)
    if cache_gb is not None and not cache_gb > 0:
        raise DataError(f"--stream-cache-gb must be more than 0; received {cache_gb}.")
    return Shards(location, meta, DEFAULT_CACHE_GB if cache_gb is None else float(cache_gb))


def _check_manifest(meta: dict, location: str) -> None:
    """A manifest is believed only once checked: every field there, of its type, labels within the classes."""

    def bad(what: str):
        return DataError(f"{join(location, MANIFEST)}: {what}. It is not one headstart prepare wrote: prepare again.")

    if meta.get("format") != FORMAT:
        raise bad(f"format {meta.get('format')!r}, this headstart reads format {FORMAT}")
    classes, task, splits = meta.get("classes"), meta.get("task"), meta.get("splits")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise bad("no list of class names")
    if task not in ("single", "multi") or not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise bad("no task, or not the three splits")
    pre = meta.get("preprocessing")
    try:
        assert isinstance(pre, dict) and set(pre) == set(RESIZED) and isinstance(pre["input_size"], int)
        Preprocessing(**pre)  # checks its values
    except (AssertionError, HeadstartError):
        raise bad(f"preprocessing {pre!r}") from None
    for split, s in splits.items():
        n = len(s.get("names", []))
        if any(len(s.get(k, [])) != n for k in ("labels", "positions", "sizes", "modes", "formats")):
            raise bad(f"the {split} split's lists differ in length")
        for y in s["labels"]:
            ids = y if task == "multi" else [y]
            if not (isinstance(ids, list) and ids and all(isinstance(i, int) and 0 <= i < len(classes) for i in ids)):
                raise bad(f"a label {y!r} in the {split} split that names no class")
        if not (isinstance(s.get("bytes"), int) and all(isinstance(p, int) for p in s["positions"])):
            raise bad(f"the {split} split's positions or size")


class ShardStore:
    """Images by sample index, read from the shards: ``store[i]`` is sample i's (size, size, 3) uint8 pixels,
    as ``headstart.data.cache.ImageStore`` gives them from the decode-once cache. Reads in index order stream
    each shard once; each split's ``StreamingDataset`` opens in the process that first reads it."""

    def __init__(self, shards: Shards, samples: list[Sample]):
        stream_index = {
            (split, name): k
            for split in SPLITS
            for k, name in enumerate(shards.meta["splits"][split]["names"])  # the n-th readable image is item n
        }
        self.shards = shards
        self.where = [(s.split, stream_index[(s.split, str(s.path))]) for s in samples]
        self.rows = np.arange(len(samples), dtype=np.int64)
        self.key = f"shards-{shards.fingerprint}"  # what frozen outputs computed from these images are kept by
        self.size = shards.preprocessing.input_size
        self._open: dict[str, Any] = {}

    def __getstate__(self) -> dict:  # a DataLoader worker opens the streams itself
        return {**self.__dict__, "_open": {}}

    def __len__(self) -> int:
        return len(self.where)

    def dataset(self, split: str):
        if split not in self._open:
            from litdata import StreamingDataset

            quiet_litdata()
            self._open[split] = StreamingDataset(**self.shards.stream_options(split))
        return self._open[split]

    def __getitem__(self, i: int) -> np.ndarray:
        split, k = self.where[i]
        return self.dataset(split)[k]["image"]
