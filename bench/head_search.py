"""The head search, candidate by candidate: what each head the search fits would have scored on the
evaluation split, beside what the search chose from the validation split alone.

    python bench/head_search.py --data demo,~/data/flowers-bench --seeds 0,1,2
    python bench/head_search.py --data TINY --quick         # 2 epochs at 32 px: checks the script runs

For each data set and seed: the features of the default run (EfficientNet-Lite0, its bundled weights,
224 px; computed once, kept on disk like every frozen pass), ``headstart.training.head_search.search_heads``
on them exactly as ``fit`` calls it, then every candidate's head at its best epoch on the evaluation
split. The search itself never reads that split; this script does, afterwards, to show how much better
(or worse) the choice is than the run's own head, and how far it is from the best candidate in
hindsight (an oracle no honest search can match). Prints a markdown table; ``--out`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def features(data: str, seed: int, quick: bool):
    """The default run's config, model (its head drawn as ``fit`` draws it, from ``seed``) and cached
    features (training, validation, evaluation) of ``data``."""
    import lightning as L

    from headstart.config import as_trained, resolve_config
    from headstart.data.cache import decoded_images
    from headstart.data.dataset import load_dataset_for
    from headstart.training.fit import build_model
    from headstart.training.frozen_pass import training_inputs

    quick_options = {"input_size": 32, "epochs": 2} if quick else {}
    cfg = as_trained(resolve_config(overrides={"data": data, "seed": seed, **quick_options}))
    L.seed_everything(seed, verbose=False)
    ds = load_dataset_for(cfg)
    model, _ = build_model(cfg, ds.num_classes)
    ds, store = decoded_images(ds, model.preprocessing)
    inputs, _ = training_inputs(cfg, model, ds, store, progress=False)
    return cfg, model, ds, inputs


def measure(data: str, seed: int, quick: bool) -> list[dict]:
    """One row per candidate: its validation figures, its evaluation accuracy, whether it was chosen."""
    import torch

    from headstart.data.dataset import split_indices
    from headstart.training.head_search import search_heads
    from headstart.training.losses import loss_weights

    cfg, model, ds, inputs = features(data, seed, quick)
    labels = split_indices(ds)["training"][1]
    weights = loss_weights(cfg, labels, ds.num_classes)
    found = search_heads(
        cfg, inputs["training"], inputs["validation"], ds.num_classes, weights, labels, start=model.head
    )
    x, y = inputs["evaluation"].tensors
    rows = []
    for t in found.trials:
        with torch.no_grad():
            correct = int((t.head(x.float()).argmax(1) == y).sum())
        rows.append(
            {
                "data": Path(data).name,
                "seed": seed,
                "candidate": t.name,
                "own": t is found.own,
                "chosen": t is found.chosen,
                "confidence": found.confidence,
                "best_epoch": t.best_epoch,
                **t.figures,
                "eval_accuracy": correct / len(y),
                "seconds": round(t.seconds, 2),
                "search_seconds": round(found.seconds, 1),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """Per data set, means over the seeds: the run's own head, the chosen one, the best in hindsight."""
    lines = [
        "| data | seeds | own head | chosen | Δ points | best candidate in hindsight | Δ points | chosen (seeds) "
        "| search s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for data in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == data]
        seeds = sorted({r["seed"] for r in mine})
        own = statistics.fmean(r["eval_accuracy"] for r in mine if r["own"])
        chosen = statistics.fmean(r["eval_accuracy"] for r in mine if r["chosen"])
        by_seed = [max(r["eval_accuracy"] for r in mine if r["seed"] == s) for s in seeds]
        oracle = statistics.fmean(by_seed)
        names = ", ".join(r["candidate"] for r in mine if r["chosen"])
        secs = statistics.fmean(r["search_seconds"] for r in mine if r["own"])
        lines.append(
            f"| {data} | {len(seeds)} | {100 * own:.1f} % | {100 * chosen:.1f} % | {100 * (chosen - own):+.1f} "
            f"| {100 * oracle:.1f} % | {100 * (oracle - own):+.1f} | {names} | {secs:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo", help="Comma-separated: 'demo' and dataset folders.")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds. Default: 0.")
    parser.add_argument("--out", help="A JSON file for every candidate's row.")
    parser.add_argument("--quick", action="store_true", help="2 epochs at 32 px: checks the script runs (the tests).")
    args = parser.parse_args(argv)
    rows = []
    for data in args.data.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows += measure(data, seed, args.quick)
            chosen = next(r for r in rows[::-1] if r["chosen"])
            print(f"{data} seed {seed}: {chosen['candidate']} {chosen['eval_accuracy']:.4f}", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
