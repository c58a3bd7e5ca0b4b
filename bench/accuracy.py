"""Small-data accuracy: each lever of `headstart train` alone and all together, on the
demo and on real colour photos, with the evaluation accuracy and the wall time of every run.

    python bench/accuracy.py prepare FLOWER_PHOTOS OUT   # once: the benchmark's split of TF Flowers
    python bench/accuracy.py run --data demo,OUT         # every row on both data sets (~1 h on 2 cores)
    python bench/accuracy.py run --data OUT --rows baseline,size-128 --seeds 0,1,2
    python bench/accuracy.py run --quick --data TINY     # 1 epoch, tiny sizes: checks the script runs

The photos: TensorFlow's ``flower_photos`` (5 classes of flowers, 3,670 photos from Flickr, mostly
240-500 px, Creative Commons Attribution 2.0, each photographer credited in its LICENSE.txt). It is
never committed: get ``flower_photos.tgz`` from TensorFlow's example images (the address is in
bench/README.md), unpack it, and ``prepare`` copies the 1,750 photos named in
bench/flowers_split.csv (per class 100 training, 50 validation, 200 evaluation; drawn once with a
fixed seed) into OUT/<split>/<class>/, with the LICENSE.txt.

Every row trains `headstart.fit` with the defaults (EfficientNet-Lite0, its bundled weights, the
default recipe) and changes only its own options. A lever this checkout does not have yet (no such
``TrainConfig`` field) is skipped with a note, and left out of the "all" rows: the script runs
today and takes each lever as it lands. The decoded-image cache is filled before the timed runs
(not timed), so every row pays its own frozen pass and training, not the decoding of the photos.

Results: one JSON and one CSV line per run in --out (written after every run, so an interrupted
benchmark keeps what it measured), and a markdown table: accuracy (the TTA one where TTA is on,
the plain one beside it), points gained and time taken against the reference row (``baseline`` for
``features`` rows and for ``half``; ``half`` for the other ``half-*`` rows), mean over the seeds.
Timings are noisy on a shared machine: compare rows of one invocation.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

SPLIT_FILE = Path(__file__).with_name("flowers_split.csv")

# Every small-data lever at once, as the "all" rows use it.
ALL = dict(input_size="auto", tta=True, aug_views=4, average="ema", class_weights="auto", lr_find=True)
# name: (strategy, the options that differ from the defaults). The default set, in table order.
ROWS: dict[str, tuple[str, dict]] = {
    "baseline": ("features", {}),
    "size-128": ("features", {"input_size": 128}),
    "size-auto": ("features", {"input_size": "auto"}),
    "tta": ("features", {"tta": True}),
    "aug-views-4": ("features", {"aug_views": 4}),
    "ema": ("features", {"average": "ema"}),
    "class-weights": ("features", {"class_weights": "auto"}),
    "lr-find": ("features", {"lr_find": True}),
    "all": ("features", ALL),
    "half": ("half", {}),
    "half-all": ("half", ALL),
}
# More rows, run only when named in --rows.
EXTRA: dict[str, tuple[str, dict]] = {
    "size-160": ("features", {"input_size": 160}),
    "swa": ("features", {"average": "swa"}),
    "sampler-balanced": ("features", {"sampler": "balanced"}),
    "monitor-accuracy": ("features", {"monitor": "val_accuracy"}),
    "no-head-search": ("features", {"head_search": "off"}),  # the tutorial's head as given (before the search)
    "half-views": ("half", {"aug_views": 4}),
    "half-tta": ("half", {"tta": True}),
}
# --quick: 1 epoch on tiny inputs. 48 px plays the weights' own size and 32 px the small one.
QUICK = dict(epochs=1, batch_size=8, input_size=48)
QUICK_SIZES = {128: 32, 160: 40}


def reference(name: str) -> str:
    """The row a row is compared with: its strategy's plain row (``half`` itself: ``baseline``)."""
    return "half" if name.startswith("half-") else "baseline"


def missing_levers(options: dict) -> list[str]:
    """The options of ``options`` this checkout's TrainConfig does not take (yet)."""
    from headstart.config import TrainConfig
    from headstart.errors import HeadstartError

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = [k for k in options if k not in known]
    if options.get("input_size") == "auto":
        try:
            TrainConfig(input_size="auto")
        except (HeadstartError, TypeError, ValueError):
            missing.append("input_size=auto")
    return missing


def plan(name: str, quick: bool) -> tuple[str, dict, str]:
    """What a row runs: its strategy, its options (without the levers not here yet), and a note;
    options None when it cannot run."""
    strategy, options = {**ROWS, **EXTRA}[name]
    missing = missing_levers(options)
    dropped = {*missing, *(["input_size"] if "input_size=auto" in missing else [])}
    kept = {k: v for k, v in options.items() if k not in dropped}
    note = f"not in this checkout: {', '.join(missing)}" if missing else ""
    if missing and (not kept or not name.endswith("all")):
        return strategy, None, note  # a single lever missing, or "all" with none: nothing to measure
    if quick:
        kept = {**QUICK, **kept}
        kept["input_size"] = QUICK_SIZES.get(kept["input_size"], kept["input_size"])
        if kept.get("aug_views"):
            kept["aug_views"] = min(kept["aug_views"], 2)
    return strategy, kept, note


def warm_cache(data: str, sizes: list[int | None]) -> None:
    """Decode the photos into headstart's image cache at each size, before anything is timed."""
    from headstart import create_model
    from headstart.config import resolve_config
    from headstart.data.cache import decoded_images
    from headstart.data.dataset import load_dataset_for

    for size in sizes:
        cfg = resolve_config(overrides={"data": data, "input_size": size})
        ds = load_dataset_for(cfg)
        model = create_model(cfg.backbone, ds.num_classes, weights="none", input_size=size)
        decoded_images(ds, model.preprocessing, progress=False)


def warm_up(data: str, runs_dir: Path) -> None:
    """One small untimed run first: the first run of a process pays one-time costs (loading the
    weights, starting Lightning, PyTorch's first kernels) that would count against the first row."""
    from headstart import fit

    fit(data, strategy="features", epochs=1, input_size=32, runs_dir=runs_dir, name="warm-up")


def native_size(backbone: str) -> int:
    from headstart import create_model

    return create_model(backbone, 2, weights="none").preprocessing.input_size


def measure(data: str, name: str, strategy: str, options: dict, seed: int, runs_dir: Path) -> dict:
    """One `headstart.fit` run: its accuracy (plain, and TTA where on) and wall time."""
    from headstart import fit

    start = time.perf_counter()
    run = fit(data, strategy=strategy, seed=seed, runs_dir=runs_dir, name=f"{Path(data).name}-{name}-{seed}", **options)
    seconds = time.perf_counter() - start
    m, cfg = run.metrics, run.config
    size = cfg.input_size if isinstance(cfg.input_size, int) else native_size(cfg.backbone)
    return {
        "accuracy": m["accuracy"],
        "correct": m["correct"],
        "total": m["total"],
        "tta_accuracy": m.get("tta_accuracy"),
        "score": m.get("tta_accuracy", m["accuracy"]),
        "seconds": round(seconds, 1),
        "epochs": len(run.history),
        "best_epoch": m.get("best_epoch"),
        "input_size": size,
        "head": m.get("head_search", {}).get("chosen", ""),  # the head the search chose, if it ran
        "head_search_seconds": m.get("head_search", {}).get("seconds"),
    }


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS and n not in EXTRA]
    if unknown:
        sys.exit(f"Unknown row(s): {', '.join(unknown)}. Choose among: {', '.join([*ROWS, *EXTRA])}.")
    seeds = [int(s) for s in str(args.seeds).split(",")]
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(args.keep_runs) if args.keep_runs else Path(tmp)
        plans = {n: plan(n, args.quick) for n in names}
        sizes = sorted(
            {p[1].get("input_size") for p in plans.values() if p[1] is not None and p[1].get("input_size") != "auto"},
            key=lambda s: s or 0,
        )
        for data in args.data.split(","):
            warm_cache(data, sizes)
            if not results:
                warm_up(data, runs_dir)
            for name, (strategy, options, note) in plans.items():
                row = {"data": data, "row": name, "strategy": strategy, "options": options, "note": note}
                if options is None:
                    results.append({**row, "seed": None, "skipped": True})
                    print(f"{data} {name}: skipped ({note})", flush=True)
                else:
                    for seed in seeds:
                        results.append(
                            {
                                **row,
                                "seed": seed,
                                "skipped": False,
                                **measure(data, name, strategy, options, seed, runs_dir),
                            }
                        )
                        print(
                            f"{data} {name} seed {seed}: {results[-1]['score']:.4f} in {results[-1]['seconds']} s",
                            flush=True,
                        )
                save(results, out)
    return results


def save(results: list[dict], out: Path) -> None:
    """results.json and results.csv in ``out``, rewritten whole (a reader never sees half a file)."""
    (out / "results.json.tmp").write_text(json.dumps(results, indent=1))
    (out / "results.json.tmp").replace(out / "results.json")
    keys = [
        "data",
        "row",
        "strategy",
        "seed",
        "skipped",
        "accuracy",
        "tta_accuracy",
        "score",
        "correct",
        "total",
        "seconds",
        "epochs",
        "best_epoch",
        "input_size",
        "head",
        "head_search_seconds",
        "options",
        "note",
    ]
    with open(out / "results.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "options": json.dumps(r["options"])} for r in results)
    (out / "results.csv.tmp").replace(out / "results.csv")


def table(results: list[dict]) -> str:
    """The markdown table: one line per data set and row, means over the seeds."""
    lines = [
        "| data | row | strategy | px | eval accuracy | plain (no TTA) | Δ points | time s | × time | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["data"], r["row"]), []).append(r)

    def mean(rows: list[dict], key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    for (data, name), rows in groups.items():
        first = rows[0]
        if first["skipped"]:
            lines.append(f"| {data} | {name} | {first['strategy']} | | | | | | | skipped: {first['note']} |")
            continue
        ref = groups.get((data, reference(name)))
        ref = ref if ref and not ref[0]["skipped"] else None
        score, secs = mean(rows, "score"), mean(rows, "seconds")
        scores = [r["score"] for r in rows]
        spread = f" ({min(scores):.1%}–{max(scores):.1%})" if len(rows) > 1 else ""
        plain = f"{mean(rows, 'accuracy'):.1%}" if first["tta_accuracy"] is not None else ""
        ref = None if name == reference(name) else ref  # the reference row itself: nothing to compare
        gain = f"{100 * (score - mean(ref, 'score')):+.1f}" if ref else ""
        ratio = f"{secs / mean(ref, 'seconds'):.2f}×" if ref else ""
        lines.append(
            f"| {data} | {name} | {first['strategy']} | {first['input_size']} | {score:.1%}{spread} | {plain} "
            f"| {gain} | {secs:.0f} | {ratio} | {first['note']} |"
        )
    return "\n".join(lines)


def prepare(src: Path, dest: Path, split_file: Path) -> int:
    """Copy the photos named in ``split_file`` (rows ``class/file,split``) from ``src`` (the unpacked
    flower_photos) into ``dest``/<split>/<class>/, with src's LICENSE.txt. All or nothing."""
    with open(split_file, newline="") as f:
        rows = [(r["path"], r["split"]) for r in csv.DictReader(f)]
    missing = [p for p, _ in rows if not (src / p).is_file()]
    if missing:
        sys.exit(
            f"{len(missing)} of the {len(rows)} photos listed in {split_file} are not in {src} (first: "
            f"{missing[0]}). Pass the folder unpacked from flower_photos.tgz (it holds daisy/, roses/, ...)."
        )
    if dest.exists():
        sys.exit(f"{dest} exists already. Pass a new folder, or remove it first.")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for path, split in rows:
        target = tmp / split / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / path, target)
    if (src / "LICENSE.txt").is_file():  # the photographers' credits travel with their photos
        shutil.copyfile(src / "LICENSE.txt", tmp / "LICENSE.txt")
    tmp.rename(dest)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="Copy the benchmark's split of flower_photos into a dataset folder.")
    p.add_argument("src", type=Path, help="The folder unpacked from flower_photos.tgz.")
    p.add_argument("dest", type=Path, help="A new folder for the dataset (the folders layout).")
    p.add_argument("--split", type=Path, default=SPLIT_FILE, help=f"Default: {SPLIT_FILE.name} beside this script.")
    r = sub.add_parser("run", help="Train every row on every data set; print the table.")
    r.add_argument("--data", default="demo", help="Comma-separated: 'demo' and dataset folders. Default: demo.")
    r.add_argument(
        "--rows",
        default=",".join(ROWS),
        help=f"Comma-separated, among: {', '.join([*ROWS, *EXTRA])}. Default: {', '.join(ROWS)}.",
    )
    r.add_argument("--seeds", default="0", help="Comma-separated training seeds; the table shows the mean. Default: 0.")
    r.add_argument(
        "--out", default="bench-accuracy", help="Folder for results.json and results.csv. Default: bench-accuracy."
    )
    r.add_argument("--keep-runs", help="Keep the run folders there (default: a temporary folder, removed).")
    r.add_argument("--quick", action="store_true", help="1 epoch at 48 and 32 px: checks the script runs (the tests).")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        n = prepare(args.src, args.dest, args.split)
        print(f"{n} photos in {args.dest}")
        return
    print("\n" + table(run_benchmark(args)))


if __name__ == "__main__":
    main()
