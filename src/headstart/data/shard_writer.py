"""Writing prepared data (``headstart prepare``): a dataset as LitData shards, each image decoded once at the input
size; and frozen features beside them. The format, and reading it, are ``headstart.data.shards``'.

Resumable: ``headstart.partial.json`` is written first and ``headstart.json`` last; LitData's checkpoints resume a
split where it stopped, and a split whose ``index.json`` exists is whole. What each image was (size, mode, format)
or why it could not be read, workers note in files of their own under the headstart cache, gathered at the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from headstart.data.images import MAX_PIXELS, decode_image
from headstart.data.layouts import SPLITS, Sample, label_ids
from headstart.data.preprocessing import Preprocessing
from headstart.data.shards import (
    CHUNK_BYTES,
    FORMAT,
    MANIFEST,
    PARTIAL,
    RESIZED,
    Shards,
    delete,
    is_url,
    join,
    local_path,
    read_json,
    writable,
    write_json,
)
from headstart.errors import DataError, ImageError
from headstart.utils.files import cache_dir

log = logging.getLogger(__name__)


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
        writable(url),
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
    done = read_json(out, MANIFEST)
    if done is not None:
        if done.get("fingerprint") == request["fingerprint"]:
            log.info("%s already holds these images, prepared: nothing to do", out)
            return done
        raise DataError(
            f"--out {out} already holds prepared data (of {done.get('source')}). Pick another --out, or delete it."
        )
    begun = read_json(out, PARTIAL)
    local = local_path(out)
    if begun is None and local is not None and local.is_dir() and any(local.iterdir()):
        raise DataError(f"--out {out} is a folder with files in it. Pick a new or empty folder.")
    if begun is not None and begun.get("fingerprint") != request["fingerprint"]:
        raise DataError(
            f"--out {out} holds an unfinished prepare of other data ({begun.get('source')}). Finish that one "
            "(the same command again), delete it, or pick another --out."
        )
    write_json(out, PARTIAL, request)
    notes = cache_dir() / "prepare" / hashlib.sha256(out.encode()).hexdigest()[:16]
    workers = workers or min(8, os.cpu_count() or 1)
    splits = {}
    for split in SPLITS:
        listing = ds.split(split)
        order = written_order(listing, seed)
        if read_json(join(out, split), "index.json") is None:  # LitData writes it when the split is whole
            if progress:
                log.info("Writing the %s split: %d images", split, len(listing))
            _write_split(listing, order, pre, join(out, split), notes / split, workers, progress)
        index = read_json(join(out, split), "index.json")
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
    write_json(out, MANIFEST, manifest)  # the last word: from now on the data is prepared
    delete(out, PARTIAL)
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
            f"The shards of the {listing[0].split if listing else ''} split hold {written} images; {len(kept)} "
            f"were noted as written and {len(missing)} have no note (an interrupted prepare keeps its notes on the "
            f"machine that began it, under {cache_dir() / 'prepare'}). Run it again there, or delete the output "
            "and prepare again."
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


def _feature_row(i: int, rows: np.ndarray) -> dict:
    return {"index": i, "row": rows[i]}


def write_features(shards: Shards, key: str, rows: np.ndarray, about: dict) -> None:
    """Frozen features of these shards' images (``key``: ``headstart.models.features.frozen_key``'s) written as
    shards beside them, ``features/<key>/``: another machine, or a later run, streams them instead of the images.
    Where the data cannot be written to (a read-only bucket), a warning."""
    from litdata import optimize

    url = join(shards.location, "features", key)
    try:
        if read_json(url, "about.json") is None:
            optimize(
                functools.partial(_feature_row, rows=rows),
                list(range(len(rows))),
                writable(url),
                chunk_bytes=CHUNK_BYTES,
                num_workers=1,
                keep_data_ordered=True,
                reorder_files=False,
                verbose=False,
                start_method="fork" if hasattr(os, "fork") else None,
                mode="overwrite",  # a half-written one (no about.json) is written again
            )
            write_json(url, "about.json", {"rows": len(rows), **about})  # last: read_features needs it
    except Exception as e:  # a read-only bucket, a full disk: the run goes on, a later one computes them again
        log.warning("the frozen features could not be written beside the shards at %s (%s)", url, e)
