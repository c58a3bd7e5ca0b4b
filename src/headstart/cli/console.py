"""What the CLI prints: the consoles, and the tables of a dataset summary, a training run, an evaluation,
a comparison, advice, predictions and backbones."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Piped output (CI logs, files) gets 120 columns rather than rich's 80, so tables are not cut.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 120)


def audit(a: dict) -> None:
    """``headstart audit``: what was found, a line each, and the first few of each kind."""
    from rich.markup import escape

    c = a["counts"]
    out.print(f"[bold]{escape(a['data'])}[/]: {a['images']:,} images, {a['backbone']} features at {a['input_size']} px")
    t = a["near_duplicates"]
    out.print(
        f"Leaks between splits: [bold]{c['leaks']}[/]; duplicates: {c['exact_duplicate_groups']} exact groups, "
        f"{c['near_duplicate_pairs']} near pairs (features >= {t['feature_threshold']} and thumbnails >= "
        f"{t['pixel_threshold']}, calibrated on {t['copies']} copies)"
    )
    out.print(
        f"Likely label mistakes: [bold]{c['label_issues']}[/]; outliers: {c['outliers']}; near-blank: "
        f"{c['near_blank']}; in suspects.csv: [bold]{c['suspects']}[/]"
    )
    for issue in a["label_issues"][:5]:
        out.print(
            f"  {escape(issue['path'])}: labelled {escape(issue['label'])}, looks like {escape(issue['suggested'])}"
        )
    out.print(f"Audit time once the features existed: {a['seconds']['after_features']} s")


def prepared(shards) -> None:
    """``headstart prepare``: what was written where, and what was left out."""
    m = shards.meta
    counts = ", ".join(f"{split} {len(m['splits'][split]['names']):,}" for split in m["splits"])
    pre = m["preprocessing"]
    out.print(
        f"[bold]{shards.location}[/]: {counts} images of {len(m['classes'])} classes ({m['task']}-label), "
        f"{pre['input_size']} px ({pre['resize']}, {pre['interpolation']}), {m['bytes'] / 1e6:,.1f} MB of shards, "
        f"written in {m['seconds']} s"
    )
    if m["problems"]:
        err.print(
            f"[yellow]{len(m['problems'])} image(s) could not be read and were left out[/] (listed in headstart.json)"
        )


def summary(s) -> None:
    """``headstart inspect``: counts per split and class, in the tutorial's words, sizes and problems."""
    out.print(f"[bold]{s.root}[/]  layout [cyan]{s.layout}[/], {len(s.classes)} classes")
    if s.drawn:
        out.print(f"Drawn from training (stratified, seeded): {', '.join(s.drawn)}")
    for split, counts in s.counts.items():
        # The tutorial's own words: "Training data available in 11 classes [994, 429, ...]"
        out.print(f"{split.capitalize()} data available in {len(counts)} classes")
        out.print(f"{counts}")
    table = Table(
        title="Images per class" if s.task == "single" else "Images per label (an image counts for each of its labels)"
    )
    table.add_column("id", justify="right")
    table.add_column("class")
    for split in s.counts:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for i, name in enumerate(s.classes):
        row = [s.counts[split][i] for split in s.counts]
        table.add_row(str(i), name, *map(str, row), str(sum(row)))
    totals = [sum(s.counts[split]) for split in s.counts]
    table.add_row("", "[bold]all[/]", *map(str, totals), str(sum(totals)))
    out.print(table)
    train = s.counts["training"]
    out.print(
        f"Imbalance (largest / smallest training class): {s.imbalance} "
        f"({s.classes[train.index(max(train))]} {max(train)} / {s.classes[train.index(min(train))]} {min(train)})"
    )
    if s.task == "multi":
        n = s.labels_per_image
        spread = ", ".join(f"{k} label{'s' if k != '1' else ''}: {v}" for k, v in n.items() if k not in ("mean", "max"))
        out.print(f"Multi-label: {n['mean']} labels an image on average ({spread})")
        if s.cooccurrences:
            out.print(
                "Most frequent together: "
                + "; ".join(f"{' + '.join(c['labels'])} {c['images']}" for c in s.cooccurrences[:5])
            )
    w, h = s.sizes["width"], s.sizes["height"]
    out.print(
        f"Image sizes: width {w['min']}-{w['max']} (median {w['median']}), height {h['min']}-{h['max']} "
        f"(median {h['median']}); {s.distinct_sizes} distinct sizes"
    )
    out.print(
        "Modes: "
        + ", ".join(f"{k} {v}" for k, v in s.modes.items())
        + "; formats: "
        + ", ".join(f"{k} {v}" for k, v in s.formats.items())
    )
    if s.problems:
        out.print(f"[yellow]Skipped {len(s.problems)} unreadable image(s):[/]")
        for p in s.problems:
            out.print(f"  {p['path']}: {p['reason']}")
    else:
        out.print("No unreadable images.")
    if s.ignored:
        shown = ", ".join(Path(p).name for p in s.ignored[:5]) + (", ..." if len(s.ignored) > 5 else "")
        out.print(f"Ignored {len(s.ignored)} file(s) that are not images: {shown}")


def training(run) -> None:
    """``headstart train``: the tutorial's accuracy and number correct (and with TTA), best epoch, the run folder."""
    m = run.metrics
    if m.get("task") == "multi":
        multilabel(m, "evaluation")
    else:
        out.print(f"Accuracy on evaluation data: {m['accuracy']:.4f}")
        out.print(f"Number of correctly identified images: {m['correct']} of {m['total']}")
        tta(m.get("tta_accuracy"), m.get("tta_correct"), m["total"])
    out.print(f"Best epoch {m['best_epoch']} of {m['epochs']}; {m['trainable_params']:,} trainable parameters")
    if run.config.lr_find:
        out.print(f"Learning rate found by the range test: {run.config.lr:.3g} (curve: {run.lr_find_file})")
    if m.get("head_search"):
        h = m["head_search"]
        out.print(
            f"Head: {h['chosen']}, chosen among {len(h['candidates'])} fitted on the features first "
            f"({h['seconds']:.1f} s; {run.head_search_file.name})"
        )
    if m.get("skipped_images"):
        out.print(f"[yellow]{m['skipped_images']} unreadable image(s) skipped[/] (listed in {run.data_file})")
    out.print(f"Run: {run.dir}")


def multilabel(m: dict, split: str) -> None:
    """A multi-label evaluation's headline figures (``MultiLabelEvaluation.to_dict``)."""
    out.print(f"mAP on {split} data: {m['map']:.4f} (mean average precision over the classes)")
    out.print(f"Micro F1 {m['micro_f1']:.4f}, macro F1 {m['macro_f1']:.4f} at each class's threshold (from validation)")
    out.print(
        f"Images with every label right: {m['correct']} of {m['total']} ({m['accuracy']:.4f}); "
        f"Hamming loss {m['hamming_loss']:.4f}"
    )
    if m.get("tta_map") is not None:
        out.print(f"With test-time augmentation (mirror image averaged in): mAP {m['tta_map']:.4f}")


def tta(accuracy: float | None, correct: int | None, total: int) -> None:
    """The figure with test-time augmentation, when there is one."""
    if accuracy is not None:
        out.print(f"With test-time augmentation (mirror image averaged in): {accuracy:.4f} ({correct} of {total})")


def evaluation(ev) -> None:
    """``headstart evaluate``: the tutorial's accuracy and number correct, the confusion matrix, per-class scores
    (multi-label: mAP and F1, the co-occurrence of true and predicted labels, each class's AP and threshold)."""
    if ev.task == "multi":
        multilabel(ev.to_dict(), ev.split)
        _matrix(ev, f"True vs predicted labels ({ev.split}): images with the row's label given the column's")
        per = Table(title="Per class")
        for col in ("class", "AP", "threshold", "precision", "recall", "F1", "support"):
            per.add_column(col, justify="left" if col == "class" else "right")
        for r in ev.per_class:
            ap = "-" if r["ap"] is None else f"{r['ap']:.3f}"
            numbers = [f"{r[k]:.3f}" for k in ("threshold", "precision", "recall", "f1")]
            per.add_row(r["class"], ap, *numbers, str(r["support"]))
        out.print(per)
        return
    out.print(f"Accuracy on {ev.split} data: {ev.accuracy:.4f}")
    out.print(f"Number of correctly identified images: {ev.correct} of {ev.total}")
    tta(ev.tta_accuracy, ev.tta_correct, ev.total)
    for k, v in ev.top_k.items():
        out.print(f"Top-{k} accuracy: {v:.4f}")
    _matrix(ev, f"Confusion matrix ({ev.split}): rows true, columns predicted")
    per = Table(title="Per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for r in ev.per_class:
        per.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    out.print(per)
    if ev.most_confused:
        out.print(
            "Most confused: " + "; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})" for c in ev.most_confused)
        )


def _matrix(ev, title: str) -> None:
    table = Table(title=title)
    table.add_column("true \\ predicted")
    for i in range(len(ev.classes)):
        table.add_column(str(i), justify="right")
    for i, (name, row) in enumerate(zip(ev.classes, ev.confusion)):
        table.add_row(f"{i} {name}", *[f"[bold]{v}[/]" if j == i else str(v) for j, v in enumerate(row.tolist())])
    out.print(table)


def comparison(result, tta: bool = False) -> None:
    """``headstart compare``: one row a strategy (with ``tta``, its TTA accuracy too), then the reading."""
    table = Table(title="Comparison")
    multi = any(r.get("map") is not None for r in result.rows)  # multi-label data: mAP beside exact-match accuracy
    for col in (
        "strategy",
        "trainable",
        "best epoch",
        "val acc",
        "eval acc",
        *(["eval mAP"] if multi else []),
        *(["TTA acc"] if tta else []),
        "correct",
        "s/epoch",
        "total s",
    ):
        table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
    for r in result.rows:
        table.add_row(
            r["strategy"],
            f"{r['trainable']:,}",
            str(r["best_epoch"]),
            f"{r['val_accuracy']:.3f}",
            f"{r['accuracy']:.3f}",
            *([f"{r['map']:.3f}"] if multi else []),
            *([f"{r['tta_accuracy']:.3f}"] if tta else []),
            f"{r['correct']}/{r['total']}",
            f"{r['seconds_per_epoch']:.2f}",
            f"{r['total_seconds']:.0f}",
        )
    out.print(table)
    out.print(result.reading)


def advice(a, data: str) -> None:
    """``headstart advise``: the measurements, the probe at each input size, the case, the rule, what to run."""
    from headstart.advice.strategy import SOURCE

    table = Table(title=f"Measured on {a.measurements['sample']} images ({a.backbone}, frozen)")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for k, v in a.measurements.items():
        if v is not None:
            table.add_row(
                k.replace("_", " "), f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
            )
    out.print(table)
    if a.resolution:
        res = a.resolution
        sizes = Table(
            title=f"Input size (photos: {res['photo_size']} px on their shorter side; the weights': "
            f"{res['native_size']} px)"
        )
        probe = "k-NN probe (mAP)" if a.measurements.get("task") == "multi" else "k-NN probe"
        for col in ("input size", probe, "time", ""):
            sizes.add_column(col, justify="left" if not col else "right")
        slowest = max(r["seconds"] for r in res["sizes"])
        for r in res["sizes"]:
            mark = "[bold]recommended[/]" if r["input_size"] == res["input_size"] else ""
            sizes.add_row(
                f"{r['input_size']} px", f"{r['knn']:.1%}", f"{r['seconds']:.2f} s ({r['seconds'] / slowest:.0%})", mark
            )
        out.print(sizes)
    out.print(f"[bold]Case:[/] {a.case}")
    for r in a.reasons:
        out.print(f"  - {r}")
    out.print(f"[bold]Rule[/], {SOURCE}:\n  \u201c{a.rule}\u201d")
    rec = a.recommendation
    out.print(f"[bold]Recommendation:[/] {rec['strategy']} — {rec['why']}.")
    if a.resolution:
        out.print(f"[bold]Input size:[/] {a.resolution['why']} (the smallest within a point of the best).")
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{'' if v else 'no-'}{k}"
        for k, v in a.overrides().items()
    )
    auto = " --input-size auto" if a.resolution else ""
    out.print(f"  headstart train {data} --backbone {a.backbone} {flags}   (or: --strategy auto{auto})")


def predictions(results, top_k: int, format: str) -> None:
    """``headstart predict``: the top classes of each image, as a table, JSON or CSV; unread images in full."""
    import csv
    import json

    from rich.markup import escape

    if format == "json":
        out.print_json(json.dumps({"predictions": [r.to_dict() for r in results]}))
        return
    multi = any(r.labels is not None for r in results)  # a multi-label model: each image's labels too
    if format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["source", "rank", "class", "probability", *(["label"] if multi else []), "error"])
        for r in results:
            given = {c for c, _ in r.labels or []}
            rows = [
                [r.source, i + 1, c, f"{p:.6f}", *([int(c in given)] if multi else []), ""]
                for i, (c, p) in enumerate(r.top)
            ] or [[r.source, "", "", "", *([""] if multi else []), r.error]]
            writer.writerows(rows)
        return
    failed = [r for r in results if r.error]
    table = Table(title=f"Predictions ({len(results) - len(failed)} of {len(results)} images)")
    table.add_column("image", overflow="fold")
    if multi:
        table.add_column("labels (at or above their thresholds)")
    for i in range(top_k):
        table.add_column(f"#{i + 1}" if i else "prediction", no_wrap=True)
    for r in results:
        cells = [f"{escape(c)} ({p:.1%})" for c, p in r.top] if not r.error else ["[red]not read (below)[/]"]
        if multi:
            cells.insert(0, ", ".join(escape(c) for c, _ in r.labels or []) or ("-" if not r.error else ""))
        table.add_row(escape(r.source), *cells)
    out.print(table)
    for r in failed:  # each on its own line, in full
        out.print(f"[red]error:[/] {escape(r.source)}: {escape(r.error)}")


def backbones(rows: list[dict]) -> None:
    """``headstart backbones``: the curated backbones, one row each."""
    table = Table(title="Backbones (any timm model name works too)")
    for col in ("name", "parameters", "groups", "input", "weights"):
        table.add_column(col, justify="left" if col in ("name", "weights") else "right", no_wrap=True)
    for row in rows:
        table.add_row(row["name"], f"{row['params']:,}", str(row["groups"]), str(row["input_size"]), row["weights"])
    out.print(table)


def backbone(name: str, model, info) -> None:
    """``headstart backbones NAME``: parameters, freezable groups input to output, hub weights, preprocessing."""
    from headstart.models.classifier import count_params  # PyTorch: not for predicting from an exported file

    total, body = count_params(model), count_params(model.body)
    out.print(f"[bold]{name}[/]: {total:,} parameters ({body:,} in the backbone, {total - body:,} in the head)")
    table = Table(title="Freezable groups, input to output")
    for col in ("#", "group", "parameters"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for i, g in enumerate(model.groups):
        table.add_row(str(i), g.name, f"{g.num_params():,}")
    out.print(table)
    if info:
        out.print(f"Hub weights: {info.hub_tag}" + (f" ({info.note})" if info.note else ""))
    out.print(f"Preprocessing: {model.preprocessing.to_dict()}")
