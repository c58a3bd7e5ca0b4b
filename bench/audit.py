"""The audit against faults put in on purpose: duplicate recall and precision, label-mistake precision and recall
among the top K, the audit's time once the features exist, and ``features`` accuracy with and without
``--exclude suspects.csv``; then the near-duplicate search alone on 50,000 feature vectors (time, peak memory).

    python bench/audit.py FOLDER [FOLDER ...] --out /tmp/audit-bench [--input-size 224]
    python bench/audit.py FOLDER --quick --out DIR        # small and fast: checks the script runs (the tests)

Each FOLDER holds class folders anywhere below it (``<class>/<photo>``; several folders are one dataset, their
classes side by side). The bench writes a manifest: each class split 60/20/20 (seeded), then

- 5 % of all photos get another class's label, drawn at random (the flips; K = their number);
- 30 training photos are copied into validation or evaluation (alternately) as copies are made: resized to 80 %,
  re-encoded as JPEG (quality 75), mirrored; with their true label.

``headstart.audit`` runs on that; a flagged near or exact pair counts as found when it is an injected
(original, copy) pair. Accuracy: ``features`` trained on the faulty manifest, with and without the audit's
suspects.csv, both scored on the evaluation photos with their true labels and without the copies.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

FLIP_SHARE, COPIES, SEED = 0.05, 30, 0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def build(folders: list[Path], work: Path, quick: bool) -> dict:
    """The faulty manifest in ``work`` (photos listed where they are; copies written there); what was injected."""
    import numpy as np
    from PIL import Image, ImageOps

    rng = np.random.default_rng(SEED)
    by_class: dict[str, list[Path]] = {}
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                by_class.setdefault(f.parent.name, []).append(f.resolve())
    if quick:
        by_class = {c: fs[:20] for c, fs in list(by_class.items())[:3]}
    classes = sorted(by_class)
    rows = []  # [path, true label, given label, split]
    for c in classes:
        files = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
        a, b = int(0.6 * len(files)), int(0.8 * len(files))
        rows += [
            [f, c, c, "training" if i < a else "validation" if i < b else "evaluation"] for i, f in enumerate(files)
        ]
    flips = rng.choice(len(rows), max(1, round(FLIP_SHARE * len(rows))), replace=False)
    for i in flips:
        rows[i][2] = str(rng.choice([c for c in classes if c != rows[i][1]]))
    flipped = {str(rows[i][0]) for i in flips}
    training = [r for r in rows if r[3] == "training" and str(r[0]) not in flipped]
    copies = {}
    (work / "copies").mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(rng.choice(len(training), min(COPIES, len(training)), replace=False)):
        original, label = training[i][0], training[i][1]
        photo = Image.open(original).convert("RGB")
        copy = ImageOps.mirror(photo.resize((round(photo.width * 0.8), round(photo.height * 0.8)), Image.BILINEAR))
        target = work / "copies" / f"copy{n}-{original.stem}.jpg"
        copy.save(target, quality=75)
        rows.append([target.resolve(), label, label, "validation" if n % 2 else "evaluation"])
        copies[str(target.resolve())] = str(original)
    with open(work / "faulty.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *[[str(r[0]), r[2], r[3]] for r in rows]])
    clean = [r for r in rows if r[3] == "evaluation" and str(r[0]) not in copies]
    return {"classes": classes, "flipped": flipped, "copies": copies, "images": len(rows), "clean_evaluation": clean}


def _accuracy(run_dir: Path, clean: list) -> float:
    """The run's accuracy on the evaluation photos with their true labels (no copy among them)."""
    import headstart

    predictions = headstart.load(run_dir, device="cpu").predict([str(r[0]) for r in clean], batch_size=64)
    return sum(p.label == r[1] for p, r in zip(predictions, clean)) / len(clean)


def search_memory(n: int, dim: int) -> dict:
    """The near-duplicate search alone on ``n`` random unit vectors, in a fresh process: seconds, peak memory."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    code = f"""
import time, json, torch
from headstart.auditing.duplicates import similar_pairs
hwm = lambda: int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
torch.manual_seed(0)
x = torch.randn({n}, {dim})
x[1] = x[0] + 0.01 * torch.randn({dim})
before = hwm()
t = time.perf_counter()
pairs = similar_pairs(x, 0.9)
print(json.dumps({{"seconds": time.perf_counter() - t, "pairs": len(pairs), "features_mb": x.numel() * 4 / 2**20,
                  "peak_mb_before": before, "peak_mb": hwm()}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="Folders of class folders of photos.")
    parser.add_argument("--out", type=Path, required=True, help="Work folder: manifest, copies, runs, results.json.")
    parser.add_argument("--input-size", type=int, default=None, help="Default: the weights' (224).")
    parser.add_argument("--vectors", type=int, default=50_000, help="Feature vectors for the search alone.")
    parser.add_argument("--quick", action="store_true", help="3 classes of 20 photos, 32 px, 2,000 vectors.")
    args = parser.parse_args(argv)
    from headstart.auditing.audit import audit
    from headstart.data.dataset import load_dataset
    from headstart.training.fit import fit

    size = 32 if args.quick else args.input_size
    work = args.out
    injected = build(args.folders, work, args.quick)
    manifest = work / "faulty.csv"
    ds = load_dataset(manifest, allow_outside_root=True)
    found = audit(ds, input_size=size, out_dir=work / "audit")
    s = found.ds.samples
    path = lambda i: str(s[i].path)
    pairs = {frozenset((path(a), path(b))) for a, b, _ in found.pairs}
    truth = {frozenset(p) for p in injected["copies"].items()}
    dup_recall = len(pairs & truth) / len(truth)
    dup_precision = len(pairs & truth) / max(1, len(pairs))
    k = len(injected["flipped"])
    ranked = [path(i) for i, _, _ in found.label_issues]
    top = set(ranked[:k]) & injected["flipped"]
    flagged = set(ranked) & injected["flipped"]
    result = {
        "images": len(s),
        "classes": len(injected["classes"]),
        "input_size": found.about["input_size"],
        "injected_flips": k,
        "injected_copies": len(truth),
        "duplicates": {"recall": dup_recall, "precision": dup_precision, "flagged_pairs": len(pairs)},
        "threshold": found.calibration,
        "labels_top_k": {"precision": len(top) / k, "recall": len(top) / k},
        "labels_all_flagged": {
            "flagged": len(ranked),
            "precision": len(flagged) / max(1, len(ranked)),
            "recall": len(flagged) / k,
        },
        "outliers": len(found.outliers),
        "near_blank": len(found.blank),
        "seconds": found.seconds,
    }
    print(json.dumps(result, indent=2), flush=True)

    accuracy = {}
    epochs = {"epochs": 1, "head_search": "off"} if args.quick else {}
    for name, exclude in (("faulty", None), ("excluded", str(work / "audit" / "suspects.csv"))):
        t = time.perf_counter()
        run = fit(
            manifest,
            strategy="features",
            input_size=size,
            allow_outside_root=True,
            exclude=exclude,
            runs_dir=work / "runs",
            name=f"{name}-{int(time.time())}",
            **epochs,
        )
        accuracy[name] = {
            "clean_accuracy": _accuracy(run.dir, injected["clean_evaluation"]),
            "seconds": time.perf_counter() - t,
        }
        print(name, accuracy[name], flush=True)
    result["accuracy"] = accuracy
    if args.quick:  # in this process: no memory figure, no second start of PyTorch
        import torch

        from headstart.auditing.duplicates import similar_pairs

        x = torch.randn(2000, 1280)
        x[1] = x[0]
        result["search"] = {"2000": {"pairs": len(similar_pairs(x, 0.9))}}
    else:
        result["search"] = {n: search_memory(n, 1280) for n in (5000, args.vectors)}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (work / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"accuracy": accuracy, "search": result["search"]}, indent=2))


if __name__ == "__main__":
    main()
