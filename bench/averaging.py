"""Weight averaging: evaluation accuracy of ``features`` runs with average none, ema and swa,
over several seeds, on the demo (or any data set).

    python bench/averaging.py                                   # demo, 128 px, seeds 0-2, ~10 min on 2 cores
    python bench/averaging.py --early-stopping 0                # every run trains all 15 epochs
    python bench/averaging.py --input-size 224 --seeds 0,1,2,3,4

The ``features`` strategy computes the frozen backbone's features once per run; they depend neither
on the seed nor on the averaging (the frozen pass is deterministic, and never augmented), so this
script computes them once per data set and size and hands the same tensors to every run: the
figures are those of separate ``headstart train`` runs, at a ninth of the cost. Prints one line a
run and a markdown table (mean, min-max over the seeds); the run folders go to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import headstart.training.fit as training

AVERAGES = ("none", "ema", "swa")


def reuse_the_frozen_pass() -> None:
    """``training.training_inputs`` computed once per (data, input size) in this process."""
    computed, original = {}, training.training_inputs

    def once(cfg, *args, **kwargs):
        assert cfg.strategy == "features"  # the only strategy whose inputs do not depend on the seed
        key = (cfg.data, cfg.input_size, cfg.backbone)
        if key not in computed:
            computed[key] = original(cfg, *args, **kwargs)
        return computed[key]

    training.training_inputs = once


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="demo")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--early-stopping", type=int, default=5, help="Patience; 0: off (every run trains all its epochs).")
    args = p.parse_args()
    reuse_the_frozen_pass()
    seeds = [int(s) for s in args.seeds.split(",")]
    scores: dict[str, list[float]] = {a: [] for a in AVERAGES}
    best: dict[str, list[int]] = {a: [] for a in AVERAGES}
    with tempfile.TemporaryDirectory() as runs:
        for seed in seeds:
            for average in AVERAGES:
                start = time.perf_counter()
                run = training.fit(
                    args.data,
                    strategy="features",
                    input_size=args.input_size,
                    epochs=args.epochs,
                    seed=seed,
                    average=average,
                    early_stopping=args.early_stopping,
                    runs_dir=runs,
                    name=f"{average}-{seed}",
                )
                m = run.metrics
                scores[average].append(m["accuracy"])
                best[average].append(m["best_epoch"])
                print(
                    f"{average} seed {seed}: {m['accuracy']:.4f} ({m['correct']}/{m['total']}), best epoch "
                    f"{m['best_epoch']} of {m['epochs']}, {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    print(
        f"\n{args.data}, features, {args.input_size} px, {args.epochs} epochs, early stopping "
        f"{args.early_stopping or 'off'}, seeds {args.seeds}\n"
    )
    print("| average | eval accuracy, mean | min–max | Δ points vs none | best epochs |")
    print("|---|---:|---:|---:|---|")
    for a in AVERAGES:
        mean = statistics.fmean(scores[a])
        gain = f"{100 * (mean - statistics.fmean(scores['none'])):+.1f}" if a != "none" else ""
        print(
            f"| {a} | {mean:.1%} | {min(scores[a]):.1%}–{max(scores[a]):.1%} | {gain} | "
            f"{', '.join(map(str, best[a]))} |"
        )


if __name__ == "__main__":
    main()
