"""Multi-label training on real photos: mean average precision, F1 and exact match of ``features``, ``half`` and
``full`` (``task="multi"``), against a one-vs-rest logistic regression on the same frozen features.

    python bench/multilabel.py FOLDER [FOLDER ...] --out /tmp/multilabel-bench [--collages 2400]
    python bench/multilabel.py FOLDER --quick --out DIR     # small and fast: checks the script runs (the tests)

Each FOLDER holds class folders anywhere below it (``<class>/<photo>``; several folders are one dataset, their
classes side by side; a split folder above the class folders is ignored). The bench writes, under ``--out``:

- ``collages/``: N collages (``--collages``), each a 2x2 grid ``--size`` px square. A collage draws k in {2, 3, 4}
  distinct classes and one photo of each, centre-cropped square, resized to half the size and put in k of the 4
  cells drawn at random; the other cells are mid-grey. Its labels are the union of its photos' classes. Each class's
  photos are split 60/20/20 first and a collage takes its photos from its own split's share, so no photo is in two
  splits; classes are drawn in proportion to their photos not used yet, so every photo is used once before any is
  used again (within its split; the number reused is reported). JPEG quality 90, seeded (numpy, seed 0).
  ``manifest.csv`` (``path,labels,split``; labels are class names joined with ``|``; collages split 60/20/20);
  ``sources.csv`` (``path,cell,source,class``; cells 0-3 row by row): which photo went where.
- ``runs/<strategy>/``: headstart's runs; ``results.json``: every figure printed.

The baseline: ``OneVsRestClassifier(LogisticRegression)`` on the features the ``features`` run computed (read from
headstart's disk cache, not computed again), C chosen by validation mAP among ``C_GRID``, fitted on training.
Every method is scored on the evaluation collages: macro mAP, and micro and macro F1 and exact match with each
class's threshold where its validation F1 is best (headstart's rule, applied to the baseline too; the baseline at
0.5 is in results.json). The ``features`` run is also scored by scikit-learn, from its best checkpoint's head on the
same features at the run's thresholds: a cross-check of headstart's own (torchmetrics) figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SEED = 0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SPLITS = ("training", "validation", "evaluation")
STRATEGIES = ("features", "half", "full")
GREY = (128, 128, 128)
C_GRID = (0.01, 0.1, 1.0, 10.0)  # the baseline's inverse regularisation strengths, chosen on validation
THRESHOLD = 0.5  # a class is predicted when its probability reaches this, where no threshold was chosen


def photos_by_class(folders: list[Path]) -> dict[str, list[Path]]:
    """Every photo below the folders, by its parent folder's name (sorted paths)."""
    by_class: dict[str, list[Path]] = {}
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                by_class.setdefault(f.parent.name, []).append(f.resolve())
    return by_class


def draw(by_class: dict[str, list[Path]], n: int, rng) -> tuple[list[dict], int]:
    """What each of ``n`` collages holds (its split, and which photo of which class goes in which cell); how
    many photos had to be used a second time."""
    classes = sorted(by_class)
    pools: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    for c in classes:  # each class's photos split first: a photo can then only be in collages of one split
        files = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
        a, b = int(0.6 * len(files)), int(0.8 * len(files))
        for s, part in zip(SPLITS, (files[:a], files[a:b], files[b:])):
            pools[s][c] = part
    a, b = int(0.6 * n), int(0.8 * n)
    splits = rng.permutation(["training"] * a + ["validation"] * (b - a) + ["evaluation"] * (n - b))
    unused = {s: {c: list(pools[s][c]) for c in classes} for s in SPLITS}
    collages, reused = [], 0
    for i, split in enumerate(splits):
        left = np.array([len(unused[split][c]) for c in classes], dtype=float)
        # Drawn in proportion to the photos not used yet: all are used once before any twice. The tiny weight
        # lets a spent class still be drawn when fewer than k classes have photos left.
        p = left + 1e-6
        k = int(rng.integers(2, min(4, len(classes)) + 1))
        chosen = rng.choice(len(classes), k, replace=False, p=p / p.sum())
        cells = rng.choice(4, k, replace=False)
        placed = []
        for ci, cell in zip(chosen, cells):
            c = classes[ci]
            if unused[split][c]:
                photo = unused[split][c].pop()
            else:  # spent: one of this split's photos again (never another split's: no leak)
                photo, reused = pools[split][c][rng.integers(len(pools[split][c]))], reused + 1
            placed.append((int(cell), photo, c))
        collages.append({"path": f"{i:05d}.jpg", "split": str(split), "placed": sorted(placed)})
    return collages, reused


def render(collage: dict, folder: Path, size: int) -> None:
    from PIL import Image, ImageOps

    half = size // 2
    canvas = Image.new("RGB", (size, size), GREY)
    for cell, photo, _ in collage["placed"]:
        with Image.open(photo) as im:
            tile = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (half, half), Image.BICUBIC)
        canvas.paste(tile, ((cell % 2) * half, (cell // 2) * half))
    canvas.save(folder / collage["path"], quality=90)


def build(folders: list[Path], work: Path, n: int, size: int, quick: bool) -> dict:
    """The collages, their manifest and sources in ``work/collages``; what was drawn."""
    by_class = photos_by_class(folders)
    if quick:
        by_class = {c: by_class[c] for c in sorted(by_class)[:3]}
    few = {c: len(fs) for c, fs in by_class.items() if len(fs) < 5}
    if len(by_class) < 2 or few:
        raise SystemExit(
            f"Need at least 2 classes of at least 5 photos each (one per split); found {len(by_class)} classes"
            + (f", too few photos in {few}" if few else "")
            + f" below {', '.join(map(str, folders))}."
        )
    collages, reused = draw(by_class, n, np.random.default_rng(SEED))
    folder = work / "collages"
    if folder.exists():
        shutil.rmtree(folder)  # the bench's own output of an earlier run
    folder.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow releases the GIL
        list(pool.map(lambda c: render(c, folder, size), collages))
    with open(folder / "manifest.csv", "w", newline="") as f:
        rows = [[c["path"], "|".join(sorted({p[2] for p in c["placed"]})), c["split"]] for c in collages]
        csv.writer(f).writerows([["path", "labels", "split"], *rows])
    with open(folder / "sources.csv", "w", newline="") as f:
        rows = [[c["path"], cell, str(photo), cls] for c in collages for cell, photo, cls in c["placed"]]
        csv.writer(f).writerows([["path", "cell", "source", "class"], *rows])
    counts = {cls: sum(cls in {p[2] for p in c["placed"]} for c in collages) for cls in sorted(by_class)}
    return {
        "collages": n,
        "size": size,
        "classes": sorted(by_class),
        "splits": {s: sum(c["split"] == s for c in collages) for s in SPLITS},
        "labels_per_collage": {k: sum(len(c["placed"]) == k for c in collages) for k in (2, 3, 4)},
        "collages_per_class": counts,
        "photos_available": sum(len(fs) for fs in by_class.values()),
        "photos_placed": sum(len(c["placed"]) for c in collages),
        "photos_reused": reused,
        "labels": {c["path"]: sorted({p[2] for p in c["placed"]}) for c in collages},
    }


def best_f1_thresholds(y, p) -> np.ndarray:
    """Per class, the probability where its F1 on these images is highest (the lowest such on a tie), as headstart
    chooses its thresholds on the validation split; ``THRESHOLD`` for a class without a positive."""
    from sklearn.metrics import precision_recall_curve

    out = np.full(y.shape[1], THRESHOLD)
    for c in range(y.shape[1]):
        if y[:, c].any():
            precision, recall, thresholds = precision_recall_curve(y[:, c], p[:, c])
            f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
            out[c] = thresholds[int(f1[:-1].argmax())]  # the last point (recall 0) has no threshold
    return out


def scores(y, p, thresholds) -> dict:
    """Macro mAP (over the classes with a positive), and micro and macro F1 and exact match with each class
    predicted where its probability reaches its threshold."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    present = y.sum(0) > 0
    hard = (p >= np.asarray(thresholds)).astype(int)
    return {
        "map": float(average_precision_score(y[:, present], p[:, present], average="macro")),
        "micro_f1": float(f1_score(y, hard, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, hard, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y, hard)),
        "classes_scored": int(present.sum()),
    }


def frozen_features(run) -> tuple[dict, list[str], bool, float]:
    """Per split (features, multi-hot targets from the manifest) as the ``features`` run computed them, through
    headstart's own code with the run's config (so read from its disk cache); the classes; whether they were read
    from the cache; the seconds it took."""
    from headstart.data.cache import decoded_images
    from headstart.data.dataset import load_dataset_for, split_indices
    from headstart.engines.choice import Engine
    from headstart.models.factory import create_model
    from headstart.training.frozen_pass import training_inputs

    t = time.perf_counter()
    cfg = run.config
    ds = load_dataset_for(cfg)
    model = create_model(cfg.backbone, ds.num_classes, weights=cfg.weights, input_size=cfg.input_size)
    ds, store = decoded_images(ds, model.preprocessing, progress=False)
    engine = Engine(cfg.engine, cfg.engine_precision)
    inputs, _ = training_inputs(cfg, model, ds, store, False, engine=engine)
    with open(Path(cfg.data), newline="") as f:
        labels = {r["path"]: r["labels"].split("|") for r in csv.DictReader(f)}
    out = {}
    for s, (idx, _) in split_indices(ds).items():
        x, given = (v.numpy() for v in inputs[s].tensors)
        y = np.zeros((len(idx), len(ds.classes)), dtype=int)
        for row, i in enumerate(idx):
            y[row, [ds.classes.index(c) for c in labels[ds.samples[i].path.name]]] = 1
        # headstart's own targets, where they are multi-hot, must be the manifest's
        assert given.ndim != 2 or (given == y).all(), f"{s}: headstart's targets differ from the manifest's"
        out[s] = (x, y)
    return out, list(ds.classes), bool(engine.used.get("kept")), time.perf_counter() - t


def baseline(features: dict) -> dict:
    """One-vs-rest logistic regression on the frozen features: C by validation mAP, fitted on training; each
    class's threshold where its validation F1 is best (as headstart's runs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    (xt, yt), (xv, yv), (xe, ye) = (features[s] for s in SPLITS)
    t = time.perf_counter()
    fitted = {C: OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000)).fit(xt, yt) for C in C_GRID}
    by_c = {C: scores(yv, m.predict_proba(xv), THRESHOLD)["map"] for C, m in fitted.items()}
    best = max(by_c, key=by_c.get)
    thresholds = best_f1_thresholds(yv, fitted[best].predict_proba(xv))
    seconds = time.perf_counter() - t
    pe = fitted[best].predict_proba(xe)
    return {
        **scores(ye, pe, thresholds),
        "at_0.5": scores(ye, pe, THRESHOLD),
        "C": best,
        "val_map_by_C": by_c,
        "thresholds": thresholds.round(6).tolist(),
        "seconds": seconds,
    }


def head_scores(run, features: dict) -> dict:
    """The ``features`` run's best checkpoint, its head on the cached evaluation features, scored by scikit-learn
    at the run's thresholds."""
    import torch

    from headstart.runs.checkpoints import load_checkpoint

    model, _ = load_checkpoint(run.best_checkpoint)
    x, y = features["evaluation"]
    with torch.no_grad():
        p = torch.sigmoid(model.eval().head(torch.from_numpy(x).float())).numpy()
    return scores(y, p, run.metrics.get("thresholds", THRESHOLD))


def machine() -> str:
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu or platform.processor()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="Folders of class folders of photos.")
    parser.add_argument("--out", type=Path, required=True, help="Work folder: collages, runs, results.json.")
    parser.add_argument("--collages", type=int, default=2400, help="Collages to make (default 2400).")
    parser.add_argument("--size", type=int, default=224, help="Collage side in px (default 224).")
    parser.add_argument("--input-size", type=int, default=224, help="The runs' input size (default 224).")
    parser.add_argument("--epochs-features", type=int, default=15, help="Epochs of features (default 15).")
    parser.add_argument("--epochs-tuned", type=int, default=6, help="Epochs of half and full (default 6).")
    parser.add_argument("--quick", action="store_true", help="40 collages of 3 classes at 64 px, 1 epoch each.")
    args = parser.parse_args(argv)
    import headstart

    if args.quick:
        args.collages, args.size, args.input_size, args.epochs_features, args.epochs_tuned = 40, 64, 64, 1, 1
    work = args.out
    started = time.perf_counter()
    data = build(args.folders, work, args.collages, args.size, args.quick)
    print(
        f"{args.collages} collages of {len(data['classes'])} classes in {time.perf_counter() - started:.0f} s; "
        f"photos placed {data['photos_placed']} of {data['photos_available']}, reused {data['photos_reused']}",
        flush=True,
    )
    manifest = work / "collages" / "manifest.csv"
    methods, runs = {}, {}
    for s in STRATEGIES:
        shutil.rmtree(work / "runs" / s, ignore_errors=True)  # the bench's own run of an earlier time
        t = time.perf_counter()
        run = headstart.fit(
            str(manifest),
            strategy=s,
            task="multi",
            input_size=args.input_size,
            epochs=args.epochs_features if s == "features" else args.epochs_tuned,
            runs_dir=str(work / "runs"),
            name=s,
            progress=True,
            seed=0,
            **({"head_search": "off"} if args.quick else {}),
        )
        m, runs[s] = run.metrics, run
        methods[s] = {
            **{k: m[k] for k in ("map", "micro_f1", "macro_f1", "accuracy")},
            "seconds": m["setup_seconds"] + m["train_seconds"],
            "wall_seconds": time.perf_counter() - t,
            "epochs": m["epochs"],
            "best_epoch": m["best_epoch"],
            "run": str(run.dir),
        }
        print(s, json.dumps(methods[s]), flush=True)
    features, classes, cached, read_seconds = frozen_features(runs["features"])
    methods["baseline"] = baseline(features)
    methods["baseline"]["wall_seconds"] = read_seconds + methods["baseline"]["seconds"]
    check = {"features_read_from_cache": cached, "feature_seconds": read_seconds}
    check["sklearn"] = head_scores(runs["features"], features)
    check["difference"] = {
        k: check["sklearn"][k] - methods["features"][k] for k in ("map", "micro_f1", "macro_f1", "accuracy")
    }
    result = {
        "machine": machine(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": data,
        "methods": methods,
        "cross_check_features": check,
        "seconds": time.perf_counter() - started,
    }
    (work / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(
        f"\n{args.collages} collages ({args.size} px, {len(classes)} classes, "
        f"{'/'.join(str(v) for v in data['splits'].values())} collages in training/validation/evaluation), "
        f"input {args.input_size} px; machine: {result['machine']}\n"
    )
    print("| method | mAP (eval) | micro F1 | macro F1 | exact match | seconds | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in methods.items():
        label = f"{name} ({r['epochs']} ep.)" if name in STRATEGIES else f"logistic regression, C={r['C']:g}"
        print(
            f"| {label} | {r['map']:.4f} | {r['micro_f1']:.4f} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} "
            f"| {r['seconds']:.1f} | {r['wall_seconds']:.1f} |"
        )
    d = check["difference"]
    print(
        f"\nfeatures scored by scikit-learn from its checkpoint: mAP {check['sklearn']['map']:.4f} "
        f"(difference {d['map']:+.1e}), micro F1 {d['micro_f1']:+.1e}, macro F1 {d['macro_f1']:+.1e}, "
        f"exact match {d['accuracy']:+.1e}; features read from the cache: {cached}"
    )


if __name__ == "__main__":
    main()
