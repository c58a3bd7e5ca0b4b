"""One self-contained HTML page per run or comparison: pictures inline, no network needed.

The pictures are also kept as PNG files beside the page (a run's: ``curves.png``,
``confusion_matrix.png``, ``misclassified.png``, ``lr_find.png``; where, ``headstart.runs.layout`` says).
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from headstart.utils.files import write_text

REPORT_HTML = "report.html"  # a comparison's; a run's is ``Run.report``
WRONG_SHOWN = 16  # the most confidently wrong evaluation images a run's report shows


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("headstart.reporting", "templates"), autoescape=select_autoescape(["html", "j2"])
    )


def render(template: str, **context) -> str:
    """A page from ``headstart/reporting/templates``."""
    return _env().get_template(template).render(**context)


def _inline(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def draw_run_pictures(run, ev, images, overlays=None) -> dict[str, Path]:
    """The run's curves and most confidently wrong evaluation images, as PNG files; with the
    confusion matrix that the evaluation drew. ``overlays``: those wrong images (``ev.wrong_shown``'s
    order) with their class-activation maps over them, each drawn beside its photo."""
    from headstart.reporting import plots  # matplotlib: not for serving a model

    out = {
        "curves": plots.plot_history(run.history, run.picture("curves"), run.metrics.get("best_epoch", 0)),
        "confusion": run.confusion_file(ev.split, "png"),
    }
    if ev.task == "multi":  # a precision-recall curve a class, its threshold marked
        out["pr_curves"] = plots.plot_pr_curves(ev.curves, ev.classes, ev.per_class, run.picture("pr_curves"))
    if run.config.lr_find and run.lr_find_picture.is_file():  # the curve that chose the head's lr
        out["lr_find"] = run.lr_find_picture
    wrong = ev.wrong_shown(WRONG_SHOWN)  # (image, class it gave, or the label it gave or missed; title)
    if wrong:
        pictures = [Image.fromarray(np.asarray(images[i])) for i, _, _ in wrong]
        titles = [title for _, _, title in wrong]
        multi = ev.task == "multi"
        title = f"Most confidently wrong {'labels' if multi else ''} (evaluation split)".replace("  ", " ")
        if overlays is not None:  # each photo, then where the model saw the class it gave
            pictures = [p for pair in zip(pictures, overlays) for p in pair]
            seen = ["where it saw\n" + ev.classes[c] for _, c, _ in wrong]
            titles = [t for pair in zip(titles, seen) for t in pair]
            title += (
                ",\neach beside where the model saw " + ("that label" if multi else "the class it gave") + " (Grad-CAM)"
            )
        out["misclassified"] = plots.plot_samples(pictures, titles, run.picture("misclassified"), title=title)
    else:
        run.picture("misclassified").unlink(missing_ok=True)
    return out


def write_run_report(run, ev, images, data: dict, overlays=None) -> Path:
    """``<run>/report.html``: headline numbers, curves, confusion matrix, per-class table,
    misclassified gallery (with ``overlays``, ``draw_run_pictures``), data summary and problems, timings and the
    resolved config."""
    pictures = draw_run_pictures(run, ev, images, overlays)
    html = render(
        "run.html.j2",
        title=f"{run.dir.name}",
        subtitle=f"{run.config.backbone} · {run.config.strategy} · recipe {run.config.recipe}"
        + (f" · weights averaged ({run.config.average})" if run.config.average != "none" else "")
        + f" · {len(ev.classes)} classes",
        m=run.metrics,
        images={k: _inline(v) for k, v in pictures.items()},
        data=data,
        config=run.config.to_dict(),
    )
    return write_text(run.report, html)


def write_compare_report(
    out_dir: Path,
    rows: list[dict],
    histories: dict,
    confusions: dict,
    classes: list[str],
    data: dict,
    reading: str,
    title: str,
    advice: dict | None = None,
    audit: dict | None = None,
) -> Path:
    """``<compare>/report.html``: the table, overlaid curves, confusion matrices side by side, a reading; a link to
    the data's audit (``audit``: its ``link`` and ``counts``) where there is one."""
    from headstart.reporting import plots  # matplotlib: not for serving a model

    pictures = {
        "curves": plots.plot_histories(histories, out_dir / "validation_curves.png"),
        "confusions": plots.plot_confusions(confusions, classes, out_dir / "confusion_matrices.png"),
    }
    score = "map" if "map" in rows[0] else "accuracy"  # multi-label data: mAP
    best = max(rows, key=lambda r: (r[score], -r["total_seconds"]))["strategy"]
    html = render(
        "compare.html.j2",
        title=title,
        subtitle=f"{data['root']} · {len(classes)} classes",
        rows=rows,
        best=best,
        images={k: _inline(v) for k, v in pictures.items()},
        data=data,
        reading=reading,
        advice=advice,
        audit=audit,
    )
    return write_text(out_dir / REPORT_HTML, html)
