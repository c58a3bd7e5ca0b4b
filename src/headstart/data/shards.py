"""Prepared data: a dataset written once as LitData shards (``headstart prepare``), streamed by every rank.

A dataset bigger than one machine's disk lives in object storage; each rank streams its share of it with
LitData's ``StreamingDataset``, keeping a bounded local cache of shards. ``write_shards`` writes every image
once, decoded and resized as the model reads it (uint8 at the input size: the decode-once cache's pixels, so
training reads no JPEG; docs/benchmarks.md, "Streaming from shards", measures the JPEG-bytes alternative).

A prepared dataset, in a local folder or at a URL (``s3://``, ``gs://``, ``azure://``, ``local:`` ...)::

    headstart.json              classes, task, preprocessing, each split's samples: written last
    training/ validation/ evaluation/    one LitData dataset a split (index.json, chunk-*.bin)

An item is ``{"index": its place in the split's listing, "label": class id (multi-label: an array of ids),
"image": (size, size, 3) uint8}``. While ``prepare`` writes, ``headstart.partial.json`` says so: a folder
with it and without ``headstart.json`` is unfinished, refused as DATA, and finished by running ``prepare``
again (LitData's checkpoints resume each split where it stopped).

>>> shards = open_shards("s3://bucket/food-224")            # doctest: +SKIP
>>> shards.preprocessing.input_size, shards.meta["counts"]["training"][:3]   # doctest: +SKIP
(224, [994, 429, 1500])
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from headstart.data.images import MAX_PIXELS, ImageInfo, decode_image
from headstart.data.layouts import SPLITS, Sample, label_ids
from headstart.data.preprocessing import Preprocessing
from headstart.errors import DataError, HeadstartError, ImageError
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


def _writable(location: str) -> str:
    """Where LitData writes ``location``: a ``local:`` folder as the folder (it reads, but does not write, local:)."""
    local = _local(location)
    return str(local) if local is not None else location


def _join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def _local(location: str) -> Path | None:
    """The folder behind a location that is on this machine's disk (``local:`` included); None for a bucket."""
    if location.startswith("local:"):
        return Path(location[len("local:") :])
    return None if is_url(location) else Path(location).expanduser()


# --- small files beside the shards ----------------------------------------------------------------


def _read_json(location: str, name: str) -> dict | None:
    local = _local(location)
    try:
        if local is not None:
            text = (local / name).read_text()
        else:
            from litdata.streaming.downloader import get_downloader

            with tempfile.TemporaryDirectory() as tmp:
                get_downloader(location, tmp, []).download_file(_join(location, name), f"{tmp}/{name}")
                text = Path(tmp, name).read_text()
    except FileNotFoundError:
        return None
    except Exception as e:  # a bucket that does not answer, credentials refused
        if "NoSuchKey" in repr(e) or "404" in str(e) or "Not Found" in str(e):
            return None
        raise DataError(
            f"Cannot read {_join(location, name)}: {type(e).__name__}: {e}. Check the URL and the credentials "
            "(docs/distributed.md, 'Data in object storage')."
        ) from None
    try:
        found = json.loads(text)
    except ValueError as e:
        raise DataError(f"{_join(location, name)} is not JSON ({e}): prepare the data again.") from None
    if not isinstance(found, dict):
        raise DataError(f"{_join(location, name)} is not a headstart manifest: prepare the data again.")
    return found


def _write_json(location: str, name: str, value: dict) -> None:
    text = json.dumps(value, indent=1) + "\n"
    local = _local(location)
    if local is not None:
        write_text(local / name, text)
        return
    from litdata.streaming.fs_provider import _get_fs_provider

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, name).write_text(text)
        _get_fs_provider(location).upload_file(f"{tmp}/{name}", _join(location, name))


def _delete(location: str, name: str) -> None:
    local = _local(location)
    if local is not None:
        (local / name).unlink(missing_ok=True)
        return
    from litdata.streaming.fs_provider import _get_fs_provider

    _get_fs_provider(location).delete_file_or_directory(_join(location, name))


# --- writing --------------------------------------------------------------------------------------


def source_fingerprint(samples: list[Sample], pre: Preprocessing, seed: int) -> str:
    """Which files (each one's size and modification time), labels and splits, at which preprocessing, in the
    order ``seed`` writes them."""
    h = hashlib.sha256(f"{FORMAT}|{pre.input_size}|{pre.resize}|{pre.interpolation}|{seed}".encode())
    for s in samples:
        try:
            st = s.path.stat()
            identity = f"{st.st_size}|{st.st_mtime_ns}"
        except (OSError, ValueError):
            identity = "unreadable"
        h.update(f"\n{s.path}|{s.label}|{s.split}|{identity}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def _encode(job: tuple[int, str, Any], pre: Preprocessing, notes: str) -> dict | None:
    """One image as a shard item (run by LitData's workers); what it was, or why it was skipped, in ``notes``."""
    position, path, label = job
    try:
        image, info = decode_image(Path(path), MAX_PIXELS)
        note = {"position": position, "size": [info.width, info.height], "mode": info.mode, "format": info.format}
    except ImageError as e:
        image, note = None, {"position": position, "error": str(e)}
    with open(Path(notes) / f"{os.getpid()}.jsonl", "a") as f:  # one file a worker: no two write one file
        f.write(json.dumps(note) + "\n")
    if image is None:
        return None  # LitData skips it: the items that follow keep their order
    pixels = np.asarray(pre.resize_image(image), dtype=np.uint8)
    stored = np.asarray(label, dtype=np.int64) if isinstance(label, tuple) else int(label)
    return {"index": position, "label": stored, "image": pixels}


def _notes(folder: Path) -> dict[int, dict]:
    out = {}
    for file in folder.glob("*.jsonl"):
        for line in file.read_text().splitlines():
            if line.strip():
                note = json.loads(line)
                out[note["position"]] = note
    return out


def written_order(listing: list[Sample], seed: int) -> list[int]:
    """The order a split's images are written in: training shuffled once (seeded), so that every shard mixes the
    classes (LitData shuffles shards and windows of items within them, not a listing sorted by class); the
    others as listed."""
    if listing and listing[0].split == "training":
        return np.random.default_rng(seed).permutation(len(listing)).tolist()
    return list(range(len(listing)))


def _write_split(
    listing: list[Sample], order: list[int], pre: Preprocessing, url: str, notes: Path, workers: int, progress: bool
):
    from litdata import optimize

    notes.mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(listing[i].path), listing[i].label) for i in order]
    optimize(
        functools.partial(_encode, pre=pre, notes=str(notes)),
        jobs,
        _writable(url),
        chunk_bytes=CHUNK_BYTES,
        num_workers=max(1, min(workers, len(jobs))),
        use_checkpoint=True,  # a second run resumes where an interrupted one stopped
        keep_data_ordered=True,  # items in listing order: the n-th readable image is item n
        reorder_files=False,
        verbose=progress,
        start_method="fork" if hasattr(os, "fork") else None,
    )


def write_shards(
    ds, pre: Preprocessing, out: str, *, workers: int | None = None, progress: bool = True, seed: int = 0
) -> dict:
    """Write ``ds`` (a ``headstart.data.dataset.Dataset`` of image files) as shards at ``out``: each image decoded
    once and resized by ``pre``, the training images in an order shuffled by ``seed``. Returns the manifest. Run
    again after an interruption, it finishes the job; on a finished one it does nothing; over other data it
    refuses (a DataError)."""
    started = time.perf_counter()
    out = out.rstrip("/") if is_url(out) else str(Path(out).expanduser().resolve())
    fingerprint = source_fingerprint(ds.samples, pre, seed)
    request = {"format": FORMAT, "source": str(ds.root), "fingerprint": fingerprint, "seed": seed}
    done = _read_json(out, MANIFEST)
    if done is not None:
        if done.get("fingerprint") == request["fingerprint"]:
            log.info("%s already holds these images, prepared: nothing to do", out)
            return done
        raise DataError(
            f"--out {out} already holds prepared data (of {done.get('source')}). Pick another --out, or delete it."
        )
    begun = _read_json(out, PARTIAL)
    local = _local(out)
    if begun is None and local is not None and local.is_dir() and any(local.iterdir()):
        raise DataError(f"--out {out} is a folder with files in it. Pick a new or empty folder.")
    if begun is not None and begun.get("fingerprint") != request["fingerprint"]:
        raise DataError(
            f"--out {out} holds an unfinished prepare of other data ({begun.get('source')}). Finish that one "
            "(the same command again), delete it, or pick another --out."
        )
    _write_json(out, PARTIAL, request)
    notes = cache_dir() / "prepare" / hashlib.sha256(out.encode()).hexdigest()[:16]
    workers = workers or min(8, os.cpu_count() or 1)
    splits = {}
    for split in SPLITS:
        listing = ds.split(split)
        order = written_order(listing, seed)
        if _read_json(_join(out, split), "index.json") is None:  # LitData writes it when the split is whole
            if progress:
                log.info("Writing the %s split: %d images", split, len(listing))
            _write_split(listing, order, pre, _join(out, split), notes / split, workers, progress)
        index = _read_json(_join(out, split), "index.json")
        splits[split] = _split_manifest(ds, listing, order, _notes(notes / split), index)
    problems = [p for s in splits.values() for p in s.pop("problems")]
    manifest = {
        **request,
        "layout": ds.layout,
        "task": ds.task,
        "classes": ds.classes,
        "preprocessing": {k: getattr(pre, k) for k in RESIZED},
        "drawn": list(ds.drawn),
        "ignored": len(ds.ignored),
        "problems": problems,
        "splits": splits,
        "bytes": sum(s["bytes"] for s in splits.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    _write_json(out, MANIFEST, manifest)  # the last word: from now on the data is prepared
    _delete(out, PARTIAL)
    shutil.rmtree(notes, ignore_errors=True)
    return manifest


def _split_manifest(ds, listing: list[Sample], order: list[int], notes: dict[int, dict], index: dict | None) -> dict:
    """A split's samples as the manifest keeps them (name, label, image size, mode and format), in the order they
    were written (``order``: item k is the k-th readable image of it), its problems, and its size on disk; a
    DataError when the shards do not hold what the notes say was written."""
    missing = [i for i in order if i not in notes]
    written = sum(c["chunk_size"] for c in (index or {}).get("chunks", []))
    kept = [i for i in order if i in notes and "error" not in notes[i]]
    if missing or written != len(kept):
        raise DataError(
            f"The shards of the {listing[0].split if listing else ''} split hold {written} images; "
            f"{len(kept)} were written and {len(missing)} have no record. Delete the output and prepare again."
        )

    def name(path: Path) -> str:
        return str(path.relative_to(ds.root)) if path.is_relative_to(ds.root) else str(path)

    return {
        "names": [name(listing[i].path) for i in kept],
        "labels": [list(label_ids(listing[i].label)) if ds.task == "multi" else listing[i].label for i in kept],
        "positions": kept,
        "sizes": [notes[i]["size"] for i in kept],
        "modes": [notes[i]["mode"] for i in kept],
        "formats": [notes[i]["format"] for i in kept],
        "bytes": sum(c.get("chunk_bytes", 0) for c in (index or {}).get("chunks", [])),
        "problems": [{"path": str(listing[i].path), "reason": notes[i]["error"]} for i in notes if "error" in notes[i]],
    }


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
        url = _join(self.location, split)
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


def _feature_row(i: int, rows: np.ndarray) -> dict:
    return {"index": i, "row": rows[i]}


def write_features(shards: Shards, key: str, rows: np.ndarray, about: dict) -> None:
    """Frozen features of these shards' images (``key``: ``headstart.models.features.frozen_key``'s) written as
    shards beside them, ``features/<key>/``: another machine, or a later run, streams them instead of the images.
    Where the data cannot be written to (a read-only bucket), a warning."""
    from litdata import optimize

    url = _join(shards.location, "features", key)
    try:
        if _read_json(url, "about.json") is None:
            optimize(
                functools.partial(_feature_row, rows=rows),
                list(range(len(rows))),
                _writable(url),
                chunk_bytes=CHUNK_BYTES,
                num_workers=1,
                keep_data_ordered=True,
                reorder_files=False,
                verbose=False,
                start_method="fork" if hasattr(os, "fork") else None,
                mode="overwrite",  # a half-written one (no about.json) is written again
            )
            _write_json(url, "about.json", {"rows": len(rows), **about})  # last: read_features needs it
    except Exception as e:  # a read-only bucket, a full disk: the run goes on, a later one computes them again
        log.warning("the frozen features could not be written beside the shards at %s (%s)", url, e)


def read_features(shards: Shards, key: str) -> tuple[np.ndarray, dict] | None:
    """The features ``write_features`` wrote under ``key``, streamed in order, and what computed them; or None."""
    url = _join(shards.location, "features", key)
    about = _read_json(url, "about.json")
    if about is None:
        return None
    from litdata import StreamingDataset

    quiet_litdata()
    stream = StreamingDataset(**{**shards.stream_options("training"), "input_dir": url})  # the cache, if a bucket
    if len(stream) != about.get("rows"):
        return None
    rows = np.stack([stream[i]["row"] for i in range(len(stream))])
    log.info("frozen features streamed from %s: not computed again", url)
    return rows, {k: v for k, v in about.items() if k != "rows"}


def open_shards(data: str, cache_gb: float | None = None) -> Shards:
    """The prepared data at ``data`` (a folder or URL), its manifest checked; a DataError when it is not
    prepared data, or not finished."""
    location = data.rstrip("/") if is_url(data) else str(Path(data).expanduser().resolve())
    meta = _read_json(location, MANIFEST)
    if meta is None:
        if _read_json(location, PARTIAL) is not None:
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
        return DataError(f"{_join(location, MANIFEST)}: {what}. It is not one headstart prepare wrote: prepare again.")

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
