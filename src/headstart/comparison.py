"""The tutorial's experiment in one call: the same data, backbone and seed, trained several ways.

>>> result = compare("demo", ["features", "half", "full", "scratch"], input_size=64)   # doctest: +SKIP
>>> result.report                                                                        # doctest: +SKIP
PosixPath('runs/compare-demo-20261130-120000/report.html')

Each strategy is an ordinary run in ``<compare folder>/<strategy>/`` (with its own report); the
comparison adds ``comparison.csv`` and a ``report.html`` with the table, the validation curves
overlaid, the confusion matrices side by side and a short reading of the result.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from headstart.advice.input_size import said_once
from headstart.advice.strategy import advise as measure
from headstart.auditing.audit import find_audit
from headstart.checks import check_run_name
from headstart.config import STRATEGIES, TrainConfig, coerce, resolve_config
from headstart.data.dataset import load_dataset_for
from headstart.errors import ConfigError, RunError
from headstart.reporting.report import REPORT_HTML, write_compare_report
from headstart.runs.folder import Run
from headstart.training.distributed import launch, parse_devices
from headstart.training.fit import fit
from headstart.utils.files import check_writable_dir, write_text

FREEZE = ("freeze", "freeze_layers")
COLUMNS = [
    "strategy",
    "trainable",
    "best_epoch",
    "val_accuracy",
    "accuracy",
    "correct",
    "total",
    "seconds_per_epoch",
    "total_seconds",
    "advised",
    "head",
]


@dataclass
class Comparison:
    dir: Path
    rows: list[dict]
    runs: dict[str, Run]
    reading: str
    advice: Any = None  # headstart.advice.strategy.Advice, when the data was measured
    interrupted: bool = False  # Ctrl-C: the runs so far, the interrupted one last; no report

    @property
    def report(self) -> Path:
        return self.dir / REPORT_HTML


def _row(strategy: str, run: Run) -> dict:
    m = run.metrics
    best = run.history[m["best_epoch"] - 1] if run.history else {}
    return {
        "strategy": strategy,
        "trainable": m["trainable_params"],
        "best_epoch": m["best_epoch"],
        "val_accuracy": best.get("val_accuracy", 0.0),
        "accuracy": m["accuracy"],
        "correct": m["correct"],
        "total": m["total"],
        "seconds_per_epoch": m["train_seconds"] / max(m["epochs"], 1),
        "total_seconds": m["setup_seconds"] + m["train_seconds"],
        "report": f"{strategy}/{run.report.name}",
        "head": m.get("head_search", {}).get("chosen", ""),  # features, gradual: the head the search chose
        **({"tta_accuracy": m["tta_accuracy"]} if "tta_accuracy" in m else {}),
        **({"map": m["map"], "val_map": best.get("val_map", 0.0)} if m.get("task") == "multi" else {}),
    }


def reading(rows: list[dict]) -> str:
    """A paragraph a person can read: which strategy won, by how much, at what cost, and what transfer bought."""
    if "map" in rows[0]:
        return _multilabel_reading(rows)
    ranked = sorted(rows, key=lambda r: (-r["accuracy"], r["total_seconds"]))
    best = ranked[0]
    text = (
        f"{best['strategy']} reached the best evaluation accuracy, {best['accuracy']:.1%} "
        f"({best['correct']} of {best['total']} images)"
    )
    if len(ranked) > 1:
        second = ranked[1]
        gap = 100 * (best["accuracy"] - second["accuracy"])
        text += f", {gap:.1f} points ahead of {second['strategy']} ({second['accuracy']:.1%})"
    text += "."
    by = {r["strategy"]: r for r in rows}
    # A lever's row (features+lr_find) is of its strategy: features+tta tunes no backbone either.
    tuned = [r for r in rows if r["strategy"].split("+")[0] not in ("features", "scratch")]
    if best["strategy"] == "features" and tuned:
        slow = max(tuned, key=lambda r: r["seconds_per_epoch"])
        speed = slow["seconds_per_epoch"] / max(best["seconds_per_epoch"], 1e-9)
        text += (
            f" It trains only a new head on features computed once, so its epochs are {speed:.0f}× faster "
            f"than {slow['strategy']}'s: on this data, fine-tuning the backbone does not pay."
        )
    if "features" in by and best["strategy"].split("+")[0] != "features":  # features+lr=0.01 is features too
        f = by["features"]
        speed = best["seconds_per_epoch"] / max(f["seconds_per_epoch"], 1e-9)
        text += (
            f" Training only a new head on frozen features reached {f['accuracy']:.1%} with epochs "
            f"{speed:.0f}× faster than {best['strategy']}'s."
        )
    if "scratch" in by and best["strategy"] != "scratch":
        s = by["scratch"]
        text += (
            f" The same network from random weights reached {s['accuracy']:.1%}: starting from pretrained "
            f"weights is worth {100 * (best['accuracy'] - s['accuracy']):.1f} points here."
        )
    pretrained = [r["accuracy"] for r in rows if r["strategy"] != "scratch"]
    if len(pretrained) > 1 and best["accuracy"] - min(pretrained) < 0.01:
        text += " The pretrained strategies are within a point of each other: prefer the cheapest."
    return text


def advice_outcome(advice, rows: list[dict]) -> str:
    """Which strategy the rules predicted, which one won, and by how much."""
    predicted = advice.strategy
    score = "map" if "map" in rows[0] else "accuracy"  # multi-label data: by mAP
    best = max(rows, key=lambda r: (r[score], -r["total_seconds"]))
    by = {r["strategy"]: r for r in rows}
    text = f"The rules ({advice.case}) predicted {predicted}"
    if predicted not in by:
        return text + ", which this comparison did not train."

    def shown(r: dict) -> str:
        return f"mAP {r['map']:.3f}" if score == "map" else f"{r['accuracy']:.1%}"

    if best["strategy"] == predicted:
        return text + f", and it won ({shown(best)})."
    gap = best[score] - by[predicted][score]
    ahead = f"{gap:.3f} mAP" if score == "map" else f"{100 * gap:.1f} points"
    return text + f"; {best['strategy']} won, {ahead} ahead of it ({shown(by[predicted])})."


def variant(label: str) -> tuple[str, dict[str, Any]]:
    """``"features+tta+aug_views=4"`` → ``("features", {"tta": True, "aug_views": 4})``: a strategy
    and the options of this run alone, so one comparison shows what a lever does side by side."""
    strategy, *levers = label.strip().split("+")
    if strategy not in STRATEGIES and strategy != "auto":
        raise ConfigError(
            f"Unknown strategy '{strategy}' in '{label}'. Choose from: {', '.join(STRATEGIES)}, auto "
            "(each optionally with +option or +option=value, e.g. features+tta)."
        )
    own = {}
    for lever in levers:
        key, _, value = lever.partition("=")
        key = key.strip().replace("-", "_")
        if key not in TrainConfig.__dataclass_fields__ or key in ("data", "strategy", "name", "runs_dir"):
            raise ConfigError(
                f"'{lever}' in '{label}' is not a training option. Use +option or +option=value "
                "with the names of `headstart train --help` (e.g. +tta, +input_size=128)."
            )
        own[key] = coerce(key, yaml.safe_load(value) if value else True)  # as a YAML config would read it
    return strategy, own


def _new_folder(path: Path) -> Path:
    if path.exists():
        raise RunError(f"{path} already exists. Pick another --name.")
    return path


def _plans(data, strategies: list[str], options: dict) -> tuple[TrainConfig, dict[str, tuple[str, dict]]]:
    """Each run's strategy and own options, by its label (``features+tta``), all checked before any work."""
    plans = {label: variant(label) for label in strategies}
    if not plans:
        raise ConfigError(f"No strategy to compare. Choose from: {', '.join(STRATEGIES)}, auto.")
    cfg = resolve_config(options.get("recipe"), None, {**options, "data": str(data)})  # bad options fail first
    for strategy, own in plans.values():
        if strategy != "auto":
            resolve_config(options.get("recipe"), None, {**options, **own, "data": str(data), "strategy": strategy})
    frozen = [k for k in FREEZE if options.get(k) is not None]
    if frozen and not {"partial", "half", "auto"} & {s for s, _ in plans.values()}:
        raise ConfigError(
            f"--{frozen[0].replace('_', '-')} sets the freeze point of half or partial; compare "
            f"trains {', '.join(strategies)}. Add half, or leave the option out."
        )
    return cfg, plans


def _advise(cfg: TrainConfig, plans: dict, options: dict, ranks, progress: bool) -> tuple[Any, dict]:
    """Measure the data once, on rank 0 (every run reads the same cache next): ``auto`` becomes the advised
    strategy, and with ``input_size=auto`` every run takes the size chosen (and records the advice)."""
    auto_size = cfg.input_size == "auto"
    advice = ranks.on_zero(
        lambda: measure(
            load_dataset_for(cfg),
            cfg.backbone,
            cfg.weights,
            None if auto_size else cfg.input_size,
            seed=cfg.seed,
            progress=progress,
            decode_all=not auto_size,
            resolution=auto_size,
            engine=cfg.engine,
            engine_precision=cfg.engine_precision,
        )
    )
    # "auto" takes the advised strategy's name, unless a run of that name is asked for too (both are kept).
    rename = advice.strategy not in plans
    plans = {
        (advice.strategy if label == "auto" and rename else label): (advice.strategy if s == "auto" else s, own)
        for label, (s, own) in plans.items()
    }
    if auto_size:
        options.update(
            input_size=advice.recommendation["input_size"], advice={**advice.to_dict(), "taken": ["input_size"]}
        )
    return advice, plans


def _own_options(strategy: str, options: dict) -> dict:
    """A freeze point (--freeze, --freeze-layers) is for the strategies that have one; weights are for
    those that start from them (scratch: random)."""
    return {
        k: v
        for k, v in options.items()
        if not (k in FREEZE and strategy not in ("partial", "half") or k == "weights" and strategy == "scratch")
    }


def _multilabel_reading(rows: list[dict]) -> str:
    """``reading`` for multi-label data: the strategies ranked by evaluation mAP."""
    ranked = sorted(rows, key=lambda r: (-r["map"], r["total_seconds"]))
    best = ranked[0]
    text = (
        f"{best['strategy']} reached the best evaluation mAP, {best['map']:.3f} (every label right on "
        f"{best['correct']} of {best['total']} images)"
    )
    if len(ranked) > 1:
        second = ranked[1]
        text += f", {best['map'] - second['map']:.3f} ahead of {second['strategy']} ({second['map']:.3f})"
    return text + f", in {best['total_seconds']:.0f} s."


def _write(out: Path, runs: dict[str, Run], advice, data_name: str) -> tuple[list[dict], str]:
    """``comparison.csv``, ``advice.json`` and the report; the rows and the reading they show."""
    rows = [_row(label, r) for label, r in runs.items()]
    text = reading(rows) + (" " + advice_outcome(advice, rows) if advice else "")
    buf = io.StringIO()
    tta = (
        ["tta_accuracy"] if any("tta_accuracy" in r for r in rows) else []
    )  # with --tta: the accuracy with test-time augmentation
    multi = ["val_map", "map"] if "map" in rows[0] else []  # multi-label data: mAP beside exact-match accuracy
    w = csv.DictWriter(buf, COLUMNS + multi + tta, extrasaction="ignore")
    w.writeheader()
    w.writerows([{**r, "advised": advice is not None and r["strategy"].split("+")[0] == advice.strategy} for r in rows])
    write_text(out / "comparison.csv", buf.getvalue())
    if advice:
        write_text(out / "advice.json", json.dumps(advice.to_dict(), indent=2) + "\n")
    first = next(iter(runs.values()))
    data_info = first.data_info()
    audited = find_audit(data_info["root"], [out.parent, Path("runs")])
    write_compare_report(
        out,
        rows,
        {s: r.history for s, r in runs.items()},
        {s: r.metrics.get("confusion_matrix") or r.metrics["cooccurrence_matrix"] for s, r in runs.items()},
        data_info["classes"],
        data_info,
        text,
        title=f"{first.config.backbone} on {data_name}: {', '.join(runs)}",
        advice=advice.to_dict() if advice else None,
        audit={"link": os.path.relpath(audited[0], out), "counts": audited[1]["counts"]} if audited else None,
    )
    return rows, text


@said_once()  # a warning about the input size: once, not once a run
def compare(
    data: str | Path,
    strategies: list[str],
    *,
    runs_dir: str = "runs",
    name: str | None = None,
    progress: bool = False,
    advise: bool = True,
    **options: Any,
) -> Comparison:
    """Train each strategy on the same data, backbone and seed; write the comparison report.

    With ``advise`` (the default) ``headstart.advice.strategy`` measures the data first and the report says
    which strategy the rules predicted; ``"auto"`` among the strategies trains that one.
    """
    cfg, plans = _plans(data, strategies, options)
    check_run_name(name)
    check_writable_dir(runs_dir, "--runs-dir")
    data_name = "demo" if str(data) == "demo" else Path(data).resolve().name
    ranks = launch(cfg.accelerator, parse_devices(cfg.devices), cfg.num_nodes)  # before any work: it is shared out
    out = ranks.on_zero(
        lambda: _new_folder(Path(runs_dir) / (name or f"compare-{data_name}-{datetime.now():%Y%m%d-%H%M%S}"))
    )
    advice = None
    if advise or any(s == "auto" for s, _ in plans.values()) or cfg.input_size == "auto":
        advice, plans = _advise(cfg, plans, options, ranks, progress)
    runs = {}
    for label, (strategy, own) in plans.items():
        options_of_run = {**_own_options(strategy, options), **own}
        folder = label.replace("/", "_").replace("\\", "_")  # +weights=a/b.h5: still one folder
        runs[label] = fit(data, strategy=strategy, runs_dir=str(out), name=folder, progress=progress, **options_of_run)
        if runs[label].interrupted:
            return Comparison(out, [], runs, "", advice, interrupted=True)
    if not ranks.is_zero:  # rank 0 writes the comparison
        return Comparison(out, [], runs, "", advice)
    rows, text = _write(out, runs, advice, data_name)
    return Comparison(out, rows, runs, text, advice)
