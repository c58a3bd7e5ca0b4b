"""Every strategy on the embedded demo data, same seed and backbone: a table of the results.

    python bench/demo_strategies.py [--input-size 96] [--strategies features,half,full,scratch]

The figures of docs/benchmarks.md's "Every strategy on the demo" are made this way.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from headstart import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--strategies", default="features,half,full,gradual,scratch")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for strategy in args.strategies.split(","):
            start = time.perf_counter()
            extra = {"epochs": args.epochs} if args.epochs else {}
            run = fit("demo", strategy=strategy, input_size=args.input_size, recipe=args.recipe, runs_dir=runs, **extra)
            total = time.perf_counter() - start
            per_epoch = sum(r["seconds"] for r in run.history) / max(len(run.history), 1)
            m = run.metrics
            rows.append(
                (
                    strategy,
                    m["trainable_params"],
                    m["best_epoch"],
                    len(run.history),
                    run.history[m["best_epoch"] - 1]["val_accuracy"],
                    m["accuracy"],
                    f"{m['correct']}/{m['total']}",
                    per_epoch,
                    total,
                )
            )
            print(rows[-1], flush=True)
    print("\n| strategy | trainable | best epoch | epochs | val acc | eval acc | correct | s/epoch | total s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:,} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]} | {r[7]:.2f} | {r[8]:.0f} |")


if __name__ == "__main__":
    main()
