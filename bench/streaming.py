"""Streaming from shards against the decode-once cache and plain files: images per second of ``full`` training at
224 px, with each source's peak memory, disk and one-time cost; and which format shards should hold (uint8 pixels
at the input size, as ``headstart prepare`` writes, or the original JPEG bytes).

    python bench/streaming.py make-data --out DIR [--source flower_photos/] [--repeats 3]
    python bench/streaming.py run --data DIR --out results.json [--batches 24] [--loader-batches 150] [--rounds 3]
        [--workers 0,2]
    python bench/streaming.py run --quick --out DIR/results.json   # seconds, on 36 demo photos: the script runs

``make-data`` copies a photo set ``--repeats`` times into ``DIR/photos/<class>/r{k}_<name>`` (TensorFlow's flower
photos: 3,670 x 3 = 11,010 files; ``LICENSE.txt`` beside). The repeats are byte-for-byte copies under other names,
so the same photo sits in several splits: this is a throughput bench, never read its accuracy. ``run`` draws the
splits as headstart does (20 % validation, 20 % evaluation, seed 0), writes every format once under DIR (timed:
the one-time cost), then measures five sources of the same augmented training batches (``--batch-size`` images at
``--input-size`` px, float [0, 1] CHW, the default recipe's random resized crop and flip, seeded per image):

- ``cache``: the decode-once cache (``decoded_images``: uint8, memory-mapped .npy), ``ImageSet`` read in
  ``EpochSampler``'s order by a torch DataLoader: what ``fit`` reads from image files;
- ``shards``: ``headstart prepare``'s shards (uint8 at the input size) in a local folder, ``streamed_images`` read by
  LitData's ``StreamingDataLoader``: what ``fit`` reads from a prepared folder;
- ``bucket``: the same shards as ``local:/DIR/...``, LitData's way of reading a folder as a bucket (every chunk is
  copied into a cache under ``$HEADSTART_CACHE/streams/`` bounded by ``--cache-gb``, emptied before each
  measurement): the stand-in for S3 without its network;
- ``files``: the JPEG files decoded and resized (the model's own preprocessing) for every image every time;
- ``jpeg``: shards of the original file bytes (bench-only: ``litdata.optimize``, same order and splits as
  ``prepare``), each item decoded and resized as it is read.

Each measurement runs in a process of its own (``streaming.py measure``), so peak memory is its own: the loader
alone for ``--loader-batches`` batches, then ``full`` training (EfficientNet-Lite0, every parameter, AdamW at
headstart's learning rates, channels-last, label smoothing 0.1: forward, backward, step) for ``--batches`` batches
from a fresh loader; the first ``--warmup`` batches of each (workers starting, the first chunk) are timed apart as
"first". Peak memory: VmHWM of the process, the largest of its loader workers' (``--workers``), and the largest sum
of anonymous memory (RssAnon: not the page cache a memory map or a read counts in RSS) over the process and its
workers, sampled every 0.2 s. Sources run interleaved, round after round (cache, shards, bucket, files, jpeg,
cache, ...); the table gives medians and ratios to ``cache`` from the same run: never compare absolute figures
across runs. Each measurement waits for the machine to be quiet (other processes under 5 % of a core), and is
measured again (``--retries``) when other processes used more than that meanwhile: on two cores one busy core
slows PyTorch many times over. Whether a read finds the page cache or the disk is not controlled: the whole set
fits in memory, but a machine that pages out idle memory (the 2-core VM of the first figures runs a kdamond that
pages out what was not touched for a minute) reads each source from its disk again. ``--quick`` measures in the
bench's own process, without waiting: its figures say only that the script runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SEED = 0
SOURCES = ("cache", "shards", "bucket", "files", "jpeg")
WHAT = {
    "cache": "decode cache (.npy, mmap)",
    "shards": "uint8 shards, local folder",
    "bucket": "uint8 shards, local: bucket path",
    "files": "JPEG files, decoded every time",
    "jpeg": "JPEG-bytes shards, local folder",
}
SPLITS = ("training", "validation", "evaluation")
BACKBONE = "efficientnet_lite0"
CHUNK_BYTES = "64MB"  # as headstart prepare writes
# A measurement during which other processes used more than this share of a core is measured again: on two cores,
# one busy core slows PyTorch's two threads many times over, not by half.
OTHERS_SHARE = 0.05


# --- the data -------------------------------------------------------------------------------------


def make_data(source: Path, out: Path, repeats: int) -> dict:
    """``repeats`` copies of every photo of ``source``'s class folders in ``out/photos/<class>/r{k}_<name>``, its
    LICENSE.txt beside (copies, not links: headstart refuses two names of one file)."""
    photos = out / "photos"
    clear(out)
    n = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (photos / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                for k in range(repeats):
                    shutil.copyfile(f, photos / folder.name / f"r{k}_{f.name}")
                    n += 1
    for name in ("LICENSE.txt", "LICENSE"):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return {"source": str(source), "repeats": repeats, "photos": n}


def clear(out: Path) -> None:
    """The bench's own files of an earlier time in ``out``: the copies, and what was made of them."""
    for stale in [out / "photos", out / "cache", *out.glob("shards-*"), *out.glob("formats-*.json")]:
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()


def make_quick_data(out: Path) -> Path:
    """36 of the demo's photos (3 classes x 12, 28 px PNG) as class folders: enough for the script to run."""
    from headstart.data.dataset import demo_root

    root, photos = demo_root(), out / "photos"
    names = root.joinpath("classes.txt").read_text().splitlines()
    clear(out)
    for c in range(3):
        (photos / f"c{c}").mkdir(parents=True)
        for f in sorted((root / "training").glob(f"{c}_*.png"))[:12]:
            shutil.copyfile(f, photos / f"c{c}" / f.name)
    (out / "LICENSE").write_text(f"Fashion-MNIST (MIT), the demo's classes {names[:3]}\n")
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _jpeg_item(job: tuple[int, str, int]) -> dict:
    index, path, label = job
    return {"index": index, "label": label, "jpeg": Path(path).read_bytes()}


def write_jpeg_shards(ds, out: Path, workers: int) -> None:
    """Each split's original file bytes and labels as LitData shards, in the order ``headstart prepare`` writes
    (training shuffled by ``SEED``): the alternative to storing pixels."""
    from litdata import optimize

    for split in SPLITS:
        listing = ds.split(split)
        # prepare's order (its written_order): training shuffled once, so that every chunk mixes the classes
        order = np.random.default_rng(SEED).permutation(len(listing)) if split == "training" else range(len(listing))
        jobs = [(int(i), str(listing[i].path), int(listing[i].label)) for i in order]
        optimize(
            _jpeg_item,
            jobs,
            str(out / split),
            chunk_bytes=CHUNK_BYTES,
            num_workers=max(1, min(workers, len(jobs))),
            keep_data_ordered=True,
            reorder_files=False,
            verbose=False,
            start_method="fork",
        )


def formats(data: Path, input_size: int, workers: int) -> dict:
    """Every format written once (the decode cache, uint8 shards, JPEG-bytes shards), timed; what each takes on
    disk. Kept in ``data/formats-<size>.json``: a second run finds them written, and reports the first run's
    times."""
    import headstart
    from headstart.data.cache import decoded_images
    from headstart.data.dataset import load_dataset
    from headstart.preparing import prepare

    record = data / f"formats-{input_size}.json"
    done = json.loads(record.read_text()) if record.is_file() else {}
    photos = data / "photos"
    ds = load_dataset(photos, seed=SEED)
    pre = headstart.create_model(BACKBONE, ds.num_classes, input_size=input_size).preprocessing
    out = {"images": {s: len(ds.split(s)) for s in SPLITS}, "classes": ds.classes}

    t = time.perf_counter()
    _, store = decoded_images(ds, pre, progress=False)
    npy = Path(os.environ["HEADSTART_CACHE"]) / "images" / f"{store.key}.npy"
    out["cache"] = {"seconds": done.get("cache", {}).get("seconds", time.perf_counter() - t), "path": str(npy)}
    out["cache"]["bytes"] = npy.stat().st_size

    shards = prepare(photos, data / f"shards-{input_size}", input_size=input_size, workers=workers, seed=SEED)
    out["shards"] = {"seconds": shards.meta["seconds"], "bytes": shards.meta["bytes"], "path": shards.location}
    out["shards"]["training_bytes"] = shards.meta["splits"]["training"]["bytes"]

    jpeg = data / "shards-jpeg"
    if not all((jpeg / s / "index.json").is_file() for s in SPLITS) or "jpeg" not in done:
        shutil.rmtree(jpeg, ignore_errors=True)
        t = time.perf_counter()
        write_jpeg_shards(ds, jpeg, workers)
        seconds = time.perf_counter() - t
    else:
        seconds = done["jpeg"]["seconds"]
    out["jpeg"] = {"seconds": seconds, "bytes": dir_bytes(jpeg), "training_bytes": dir_bytes(jpeg / "training")}
    out["jpeg"]["path"] = str(jpeg)

    training = {str(s.path) for s in ds.split("training")}
    out["files"] = {
        "seconds": 0.0,
        "bytes": sum(s.path.stat().st_size for s in ds.samples),
        "training_bytes": sum(Path(p).stat().st_size for p in training),
        "path": str(photos),
    }
    share = len(ds.split("training")) / len(ds.samples)
    out["cache"]["training_bytes"] = int(out["cache"]["bytes"] * share)  # one fixed-size row an image
    record.write_text(json.dumps(out, indent=1))
    return out


# --- the sources ----------------------------------------------------------------------------------


class FileImages:
    """A map-style dataset of image files decoded and resized every time they are read, then augmented as
    ``ImageSet`` augments (image i of epoch e from its own seed)."""

    def __init__(self, samples, labels, pre, seed: int = SEED):
        from headstart.data.image_set import augmentation

        self.samples, self.labels, self.pre, self.seed, self.epoch = samples, labels, pre, seed, 0
        self.transform = augmentation(pre.input_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from headstart.data.image_set import as_input
        from headstart.data.images import load_image
        from headstart.data.samplers import seed_of

        pixels = np.asarray(self.pre.resize_image(load_image(self.samples[i].path)), dtype=np.uint8)
        return as_input(pixels, self.transform, seed_of(self.seed, self.epoch, i)), self.labels[i]


def jpeg_stream(folder: Path, pre, seed: int = SEED):
    """The training split of the JPEG-bytes shards, streamed and shuffled as ``streamed_images`` streams the uint8
    ones: each item decoded (``decode_bytes``: EXIF turned, RGB), resized by ``pre`` and augmented."""
    from litdata import StreamingDataset

    from headstart.data.image_set import as_input, augmentation
    from headstart.data.images import decode_bytes
    from headstart.data.samplers import seed_of
    from headstart.data.shards import quiet_litdata

    class JpegImages(StreamingDataset):  # forked DataLoader workers inherit it: never pickled
        def __getitem__(self, index):
            item = super().__getitem__(index)
            pixels = np.asarray(pre.resize_image(decode_bytes(item["jpeg"])), dtype=np.uint8)
            epoch = max(self.current_epoch - 1, 0)
            return as_input(pixels, self.augment, seed_of(seed, epoch, int(item["index"]))), int(item["label"])

    quiet_litdata()
    images = JpegImages(str(folder / "training"), shuffle=True, seed=seed)
    images.augment = augmentation(pre.input_size)
    return images


def loader(source: str, data: Path, input_size: int, batch_size: int, workers: int, cache_gb: float):
    """The training batches of ``source``, as ``fit`` would read them (the options of its ``_loaders``)."""
    import torch
    from litdata import StreamingDataLoader

    import headstart
    from headstart.data.cache import decoded_images
    from headstart.data.dataset import load_dataset, split_indices
    from headstart.data.image_set import ImageSet, streamed_images
    from headstart.data.samplers import EpochSampler, RankBatches

    kw = {"num_workers": workers, "persistent_workers": workers > 0}
    if source in ("shards", "bucket"):
        where = str(data / f"shards-{input_size}")
        ds = load_dataset(f"local:{where}" if source == "bucket" else where, stream_cache_gb=cache_gb)
        images = streamed_images(ds.stream, "training", True, SEED, ds.num_classes, drop_last=False)
        return StreamingDataLoader(images, batch_size=batch_size, **kw)
    ds = load_dataset(data / "photos", seed=SEED)
    pre = headstart.create_model(BACKBONE, ds.num_classes, input_size=input_size).preprocessing
    if source == "jpeg":
        return StreamingDataLoader(jpeg_stream(data / "shards-jpeg", pre), batch_size=batch_size, **kw)
    if source == "cache":
        ds, store = decoded_images(ds, pre, progress=False)
        idx, y = split_indices(ds)["training"]
        images = ImageSet(store, idx, y, augment=True, seed=SEED)
    elif source == "files":
        idx, y = split_indices(ds)["training"]
        images = FileImages([ds.samples[i] for i in idx], y, pre)
    else:
        raise SystemExit(f"Unknown source {source!r}. Choose one of: {', '.join(SOURCES)}.")
    order = RankBatches(EpochSampler(images, SEED), batch_size)
    return torch.utils.data.DataLoader(images, batch_sampler=order, **kw)


def batches(loader):
    """The loader's batches, epoch after epoch (its ``EpochSampler`` told each epoch, as Lightning tells it)."""
    epoch = 0
    while True:
        order = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        if hasattr(order, "set_epoch"):
            order.set_epoch(epoch)
        yield from loader
        epoch += 1


# --- one measurement, in a process of its own ----------------------------------------------------


def _status(pid: int | str) -> dict[str, int]:
    """VmRSS, VmHWM and RssAnon of a process in MB (empty once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = [ln.split() for ln in f if ln.startswith(("VmRSS", "VmHWM", "RssAnon"))]
    except OSError:
        return {}
    return {ln[0].rstrip(":"): int(ln[1]) / 1024 for ln in lines}


class Peaks:
    """Peak memory while the ``with`` block runs: this process's VmHWM, the largest of its workers' (sampled
    every 0.2 s), the largest sum of anonymous memory over them all, and the largest size of ``folder``."""

    def __init__(self, folder: Path | None = None):
        self.folder, self.worker_hwm, self.anon, self.folder_bytes = folder, 0.0, 0.0, 0

    def __enter__(self) -> Peaks:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        me = _status("self")
        workers = [_status(p.pid) for p in multiprocessing.active_children()]
        self.worker_hwm = max([self.worker_hwm] + [w.get("VmHWM", 0) for w in workers])
        self.anon = max(self.anon, me.get("RssAnon", 0) + sum(w.get("RssAnon", 0) for w in workers))
        if self.folder is not None:
            self.folder_bytes = max(self.folder_bytes, dir_bytes(self.folder))

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def now(self) -> dict:
        """The peaks so far (MB; the folder's in bytes)."""
        self.sample()
        peaks = {"rss_mb": _status("self")["VmHWM"], "worker_rss_mb": self.worker_hwm, "anon_mb": self.anon}
        return {**peaks, **({"cache_folder_bytes": self.folder_bytes} if self.folder is not None else {})}


def _timed(stream, n: int, warmup: int, step=None) -> dict:
    """Seconds of the first ``warmup`` batches, then of the next ``n`` (``step`` run on each), and images read."""
    t = time.perf_counter()
    for _ in range(warmup):
        x, y = next(stream)
        if step:
            step(x, y)
    first = time.perf_counter() - t
    seen, t = 0, time.perf_counter()
    for _ in range(n):
        x, y = next(stream)
        if step:
            step(x, y)
        seen += len(y)
    seconds = time.perf_counter() - t
    return {"images": seen, "seconds": seconds, "images_per_s": seen / seconds, "first_seconds": first}


def training_step(num_classes: int, input_size: int, data: Path):
    """``full``: every parameter of EfficientNet-Lite0 training at headstart's default recipe (AdamW, the head at
    lr, the body at discriminative rates below backbone_lr, label smoothing 0.1, channels-last), as a function of
    one batch."""
    import torch

    from headstart.config import TrainConfig
    from headstart.models import strategies as S
    from headstart.models.features import memory_layout
    from headstart.training.fit import build_model
    from headstart.training.losses import train_loss
    from headstart.training.optimizers import make_optimizer

    cfg = TrainConfig(data=str(data), strategy="full", input_size=input_size, seed=SEED)
    model, _ = build_model(cfg, num_classes)
    model.train()
    groups = S.param_groups(model, cfg.lr, cfg.backbone_lr, cfg.lr_decay)
    opt = make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.weight_decay)
    loss_fn = train_loss(cfg.loss, None, cfg.label_smoothing, "single")
    torch.manual_seed(SEED)

    def step(x, y):
        loss = loss_fn(model(memory_layout(x, cfg.channels_last)), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(args) -> dict:
    """One source: the loader alone, then ``full`` training from a fresh loader, with the peaks of each."""
    streams = Path(os.environ["HEADSTART_CACHE"]) / "streams"
    if args.source == "bucket":
        shutil.rmtree(streams, ignore_errors=True)  # every measurement starts with an empty local cache
    out = {"source": args.source, "workers": args.workers}
    with Peaks(streams if args.source == "bucket" else None) as peaks:
        make = (args.source, args.data, args.input_size, args.batch_size, args.workers, args.cache_gb)
        read = loader(*make)
        stream = batches(read)
        out["loader"] = _timed(stream, args.loader_batches, args.warmup)
        del stream, read
        gc.collect()  # the loader's workers end here: the training's loader starts its own
        out["loader"]["peaks"] = peaks.now()
        formats_ = json.loads((args.data / f"formats-{args.input_size}.json").read_text())
        step = training_step(len(formats_["classes"]), args.input_size, args.data)
        stream = batches(loader(*make))
        out["training"] = _timed(stream, args.batches, args.warmup, step)
        del stream
        gc.collect()
        out["training"]["peaks"] = peaks.now()
    return out


# --- the run --------------------------------------------------------------------------------------


def machine() -> dict:
    import hashlib

    import torch

    import headstart

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None)
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "headstart": str(Path(headstart.__file__).parent),
        "headstart_sources_sha256": hashlib.sha256(
            b"".join(p.read_bytes() for p in sorted(Path(headstart.__file__).parent.rglob("*.py")))
        ).hexdigest()[:16],
    }


def _cpu_seconds() -> dict[int, tuple[int, float]]:
    """Every process's parent and CPU seconds so far (user + system), from /proc."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


class OthersCpu:
    """CPU seconds that processes outside this one's tree used while the ``with`` block ran (sampled every
    second: a process that came and went between two samples is missed). A measurement is only fair when
    nothing else ran."""

    def __enter__(self) -> OthersCpu:
        self.start, self.used = _cpu_seconds(), {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        now, mine = _cpu_seconds(), {os.getpid()}
        for _ in range(4):  # the bench, its measuring process, that one's loader workers (and their helpers)
            mine |= {pid for pid, (parent, _) in now.items() if parent in mine}
        for pid, (_, cpu) in now.items():
            if pid not in mine:
                self.used[pid] = cpu - self.start.get(pid, (0, 0.0))[1]

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.seconds = sum(self.used.values())


def quiet(limit: float, window: float = 5.0, share: float = 0.05) -> float:
    """Wait until other processes use under ``share`` of a core over ``window`` seconds (at most ``limit``
    seconds); the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        with OthersCpu() as others:
            time.sleep(window)
        if others.seconds < share * window:
            break
    return time.perf_counter() - started


def run_one(args, source: str, workers: int) -> dict:
    """``measure`` in a fresh process (its memory its own); its result. ``--quick``: in this process."""
    if args.quick:
        return measure(argparse.Namespace(**{**vars(args), "source": source, "workers": workers}))
    command = [sys.executable, __file__, "measure", "--source", source, "--data", str(args.data)]
    for flag in ("input_size", "batch_size", "batches", "loader_batches", "warmup", "cache_gb"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    done = subprocess.run(command + ["--workers", str(workers)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{source}, {workers} workers failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], workers: list[int]) -> dict:
    """Per workers and source: medians over the rounds, and ratios to ``cache`` (median of the per-round
    ratios, and their range)."""
    out = {}
    for w in workers:
        mine = [r for r in rows if r["workers"] == w]
        base = {r["round"]: r for r in mine if r["source"] == "cache"}
        out[w] = {}
        for s in SOURCES:
            runs = [r for r in mine if r["source"] == s]
            if not runs:
                continue
            entry = {}
            for phase in ("loader", "training"):
                speeds = [r[phase]["images_per_s"] for r in runs]
                ratios = [r[phase]["images_per_s"] / base[r["round"]][phase]["images_per_s"] for r in runs]
                entry[phase] = {
                    "images_per_s": statistics.median(speeds),
                    "all": speeds,
                    "ratio": statistics.median(ratios),
                    "ratio_range": [min(ratios), max(ratios)],
                    "first_seconds": statistics.median(r[phase]["first_seconds"] for r in runs),
                    "peaks": {k: max(r[phase]["peaks"][k] for r in runs) for k in runs[0][phase]["peaks"]},
                }
            out[w][s] = entry
    return out


def table(summary: dict, fmt: dict, cfg: dict) -> str:
    lines = []
    for w, by_source in summary.items():
        lines += [
            f"\n{w} loader workers, batches of {cfg['batch_size']} at {cfg['input_size']} px; loader: "
            f"{cfg['loader_batches']} batches, training: {cfg['batches']} batches, after {cfg['warmup']} (first); "
            f"median of {min(len(e['loader']['all']) for e in by_source.values())} of {cfg['rounds']} rounds "
            "(x: to cache in the same round, median [range])\n",
            "| source | loader img/s | x cache | training img/s | x cache | first batch s (loader / train) "
            "| peak RSS MB (process / worker) | peak anon MB | local cache peak MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s, e in by_source.items():
            lo, tr = e["loader"], e["training"]
            p = tr["peaks"]
            folder = p.get("cache_folder_bytes")
            lines.append(
                f"| {s}: {WHAT[s]} | {lo['images_per_s']:.0f} | {lo['ratio']:.2f} "
                f"[{lo['ratio_range'][0]:.2f}-{lo['ratio_range'][1]:.2f}] | {tr['images_per_s']:.1f} "
                f"| {tr['ratio']:.2f} [{tr['ratio_range'][0]:.2f}-{tr['ratio_range'][1]:.2f}] "
                f"| {lo['first_seconds']:.2f} / {tr['first_seconds']:.2f} "
                f"| {lo['peaks']['rss_mb']:.0f} / {lo['peaks']['worker_rss_mb']:.0f} loader; "
                f"{p['rss_mb']:.0f} / {p['worker_rss_mb']:.0f} training "
                f"| {lo['peaks']['anon_mb']:.0f}; {p['anon_mb']:.0f} "
                f"| {'' if folder is None else f'{folder / 1e6:.0f}'} |"
            )
    lines += [
        f"\nOn disk ({fmt['images']['training']} training of {sum(fmt['images'].values())} images) and written once:\n",
        "| format | MB, all splits | MB, training | KB an image | one-time s |",
        "|---|---|---|---|---|",
    ]
    n = sum(fmt["images"].values())
    for key, name in (
        ("files", "JPEG files (the source)"),
        ("cache", "decode cache .npy"),
        ("shards", "uint8 shards (headstart prepare)"),
        ("jpeg", "JPEG-bytes shards"),
    ):
        f = fmt[key]
        lines.append(
            f"| {name} | {f['bytes'] / 1e6:.0f} | {f['training_bytes'] / 1e6:.0f} | {f['bytes'] / n / 1e3:.1f} "
            f"| {f['seconds']:.1f} |"
        )
    return "\n".join(lines)


def run(args) -> None:
    if args.quick:
        args.data = args.data or make_quick_data(args.out.parent / "quick-data")
        args.input_size, args.batch_size, args.batches, args.loader_batches = 64, 4, 2, 3
        args.warmup, args.rounds, args.workers = 1, 1, "0"
    if args.data is None:
        raise SystemExit("Pass --data DIR (a folder make-data wrote), or --quick.")
    args.data = args.data.resolve()
    os.environ.setdefault("HEADSTART_CACHE", str(args.data / "cache"))  # the decode cache and the bucket's cache
    workers = [int(w) for w in str(args.workers).split(",")]
    started = time.perf_counter()
    fmt = formats(args.data, args.input_size, max(workers + [1]))
    print(json.dumps({k: v for k, v in fmt.items() if k != "classes"}), flush=True)
    rows, discarded = [], []
    for r in range(args.rounds):
        for w in workers:
            for s in SOURCES:
                if args.stop is not None and args.stop.exists():
                    print(f"{args.stop} exists: stopping after {len(rows)} measurements", flush=True)
                    break
                for attempt in range(1 + args.retries):
                    waited = quiet(args.quiet_wait) if not args.quick else 0.0
                    t = time.perf_counter()
                    with OthersCpu() as others:
                        row = {"round": r, **run_one(args, s, w)}
                    row.update(wall_seconds=time.perf_counter() - t, others_cpu_seconds=others.seconds)
                    row.update(waited_seconds=waited, attempt=attempt)
                    if others.seconds < OTHERS_SHARE * row["wall_seconds"]:
                        break
                    discarded.append(row)  # another program ran meanwhile: measured again
                    print(f"  other processes used {others.seconds:.0f} CPU s meanwhile: measuring again", flush=True)
                rows.append(row)
                lo, tr = row["loader"], row["training"]
                print(
                    f"round {r}, {w} workers, {s}: loader {lo['images_per_s']:.0f} img/s, "
                    f"training {tr['images_per_s']:.1f} img/s, peak RSS {tr['peaks']['rss_mb']:.0f} MB; "
                    f"{row['wall_seconds']:.0f} s, other processes' CPU {others.seconds:.1f} s",
                    flush=True,
                )
    rounds_done = {w: min(sum(r["workers"] == w and r["source"] == s for r in rows) for s in SOURCES) for w in workers}
    summary = summarise(rows, [w for w in workers if rounds_done[w]])
    cfg = {
        k: getattr(args, k)
        for k in ("input_size", "batch_size", "batches", "loader_batches", "warmup", "rounds", "cache_gb")
    }
    result = {
        "machine": machine(),
        "options": {**cfg, "workers": workers, "data": str(args.data), "quick": args.quick},
        "formats": fmt,
        "summary": summary,
        "rows": rows,
        "discarded": discarded,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    m = result["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)")
    print(table(summary, fmt, cfg))
    print(f"\n{args.out}; {result['seconds']:.0f} s in all")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-data", help="Copy a photo set --repeats times into OUT/photos.")
    make.add_argument("--out", type=Path, required=True, help="The bench's data folder.")
    make.add_argument("--source", type=Path, default=Path("/work/data/flower_photos"), help="Class folders of photos.")
    make.add_argument("--repeats", type=int, default=3, help="Copies of each photo (default 3: 11,010 flowers).")
    for name in ("run", "measure"):
        p = commands.add_parser(name, help="Measure every source." if name == "run" else "One source (internal).")
        p.add_argument("--data", type=Path, help="The folder make-data wrote; the formats are written there.")
        p.add_argument("--input-size", type=int, default=224, help="Input size in px (default 224).")
        p.add_argument("--batch-size", type=int, default=32, help="Images a batch (default 32, headstart's).")
        p.add_argument("--batches", type=int, default=24, help="Training batches timed (default 24).")
        p.add_argument("--loader-batches", type=int, default=150, help="Loader-only batches timed (default 150).")
        p.add_argument("--warmup", type=int, default=2, help="Batches before the timing, timed apart (default 2).")
        p.add_argument("--cache-gb", type=float, default=0.5, help="bucket: stream_cache_gb (default 0.5).")
    measure_parser = commands.choices["measure"]
    measure_parser.add_argument("--source", choices=SOURCES, required=True)
    measure_parser.add_argument("--workers", type=int, default=0)
    runner = commands.choices["run"]
    runner.add_argument("--out", type=Path, required=True, help="The results JSON.")
    runner.add_argument("--rounds", type=int, default=3, help="Rounds of every source, interleaved (default 3).")
    runner.add_argument("--workers", default="0,2", help="Loader workers, a comma-separated list (default 0,2).")
    runner.add_argument("--quick", action="store_true", help="36 demo photos at 64 px, 1 round: the script runs.")
    runner.add_argument(
        "--quiet-wait", type=float, default=3600, help="Most seconds to wait for a quiet machine (default 3600)."
    )
    runner.add_argument("--retries", type=int, default=2, help="Measure again when others ran (default 2).")
    runner.add_argument("--stop", type=Path, help="A file: when it exists, stop between measurements and report.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command == "make-data":
        print(json.dumps(make_data(args.source, args.out, args.repeats)))
    elif args.command == "run":
        run(args)
    else:
        print(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
