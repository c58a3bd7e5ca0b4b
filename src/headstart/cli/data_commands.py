"""The commands about data: ``inspect``, ``backbones``, ``advise``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.checks import check_input_size
from headstart.cli import console as show
from headstart.cli.app import SHOW, command
from headstart.cli.console import out
from headstart.cli.options import (
    AllowOutsideRoot,
    Data,
    EngineOption,
    EnginePrecision,
    EvalFraction,
    ForceInputSize,
    Layout,
    MaxPixels,
    ProbeInputSize,
    Seed,
    StreamCacheGb,
    Task,
    ValFraction,
    Weights,
)
from headstart.data.images import MAX_PIXELS


@command
def inspect(
    data: Data,
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", help="Where to write the pictures and inspect.json.", show_default="runs/inspect-<name>"),
    ] = None,
    layout: Layout = None,
    val_fraction: ValFraction = 0.2,
    eval_fraction: EvalFraction = 0.2,
    seed: Seed = 0,
    max_pixels: MaxPixels = MAX_PIXELS,
    allow_outside_root: AllowOutsideRoot = False,
    task: Task = None,
    stream_cache_gb: StreamCacheGb = None,
) -> None:
    """Counts per split and class, imbalance, image sizes, problems; class_distribution.png and samples.png."""
    from headstart.data import inspection as inspection

    if out_dir is None:
        out_dir = Path("runs") / f"inspect-{'demo' if data == 'demo' else Path(data.split(':')[-1]).resolve().name}"
    summary = inspection.inspect_dataset(
        data,
        out_dir,
        layout=layout,
        val_fraction=val_fraction,
        eval_fraction=eval_fraction,
        seed=seed,
        max_pixels=max_pixels,
        progress=SHOW["progress"],
        allow_outside_root=allow_outside_root,
        task=task or "auto",
        stream_cache_gb=stream_cache_gb,
    )
    show.summary(summary)
    out.print(
        f"Wrote {out_dir / inspection.DISTRIBUTION_PNG}, {out_dir / inspection.SAMPLES_PNG}, "
        f"{out_dir / inspection.SUMMARY_JSON}"
    )
    out.print(
        f"Next: [bold]headstart audit {data}[/] finds duplicates, leaks between splits and likely label mistakes."
    )


@command
def audit(
    data: Data,
    backbone: Annotated[str, typer.Option(help="Whose frozen features the audit compares.")] = "efficientnet_lite0",
    weights: Weights = "default",
    input_size: ProbeInputSize = None,
    force_input_size: ForceInputSize = False,
    out_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Where audit.html, audit.json and suspects.csv go.", show_default="runs/audit-<name>"
        ),
    ] = None,
    threshold: Annotated[
        Optional[float],
        typer.Option(
            min=0.0, max=1.0, help="Cosine similarity from which photos are near duplicates.", show_default="calibrated"
        ),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="Folds of the classifier that judges each label.")] = 5,
    layout: Layout = None,
    seed: Seed = 0,
    engine: EngineOption = "auto",
) -> None:
    """Find what is wrong in DATA: duplicates, leaks between splits, likely label mistakes, outliers, blanks."""
    from headstart.auditing.audit import AUDIT_HTML, SUSPECTS_CSV
    from headstart.auditing.audit import audit as run_audit

    check_input_size(input_size, force_input_size)
    found = run_audit(
        data,
        backbone,
        weights,
        input_size,
        out_dir,
        threshold=threshold,
        folds=folds,
        layout=layout,
        seed=seed,
        engine=engine,
        progress=SHOW["progress"],
    )
    show.audit(found.to_dict())
    out.print(f"Wrote {found.out_dir / AUDIT_HTML} (open it), audit.json and {found.out_dir / SUSPECTS_CSV}")
    out.print(f"Edit {SUSPECTS_CSV}, then: headstart train {data} --exclude {found.out_dir / SUSPECTS_CSV}")


@command
def backbones(
    name: Optional[str] = typer.Argument(None, help="Show one backbone's groups and preprocessing (any timm name)."),
    weights: str = typer.Option("none", help="With NAME: load these weights (default, bundled, hub, none, or a file)."),
    num_classes: int = typer.Option(11, help="With NAME: classes of the head (11 as in Food-11)."),
) -> None:
    """List the curated backbones, or show one: parameters, freezable groups, preprocessing."""
    from headstart.models.factory import REGISTRY, create_model, list_backbones

    if name is None:
        show.backbones(list_backbones())
    else:
        show.backbone(name, create_model(name, num_classes, weights=weights), REGISTRY.get(name))


@command
def advise(
    data: Data,
    backbone: Annotated[str, typer.Option(help="The backbone to advise for.")] = "efficientnet_lite0",
    weights: Weights = "default",
    input_size: ProbeInputSize = None,
    force_input_size: ForceInputSize = False,
    sample: Annotated[int, typer.Option(min=5, help="Images per class probed (a bounded sample).")] = 60,
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the advice as JSON.")] = False,
    layout: Layout = None,
    task: Task = None,
    allow_outside_root: AllowOutsideRoot = False,
    engine: EngineOption = "auto",
    engine_precision: EnginePrecision = "fp32",
    stream_cache_gb: StreamCacheGb = None,
) -> None:
    """Measure DATA (size; similarity to the pretraining data): a strategy by the rules, an input size (2-3 probed)."""
    import json

    from headstart.advice.strategy import advise as run_advise
    from headstart.data.dataset import load_dataset

    check_input_size(input_size, force_input_size)  # as train checks it
    given = allow_outside_root or task not in (None, "auto") or stream_cache_gb  # read here, as asked; else by advise
    source = (
        load_dataset(
            data,
            layout,
            seed=seed,
            allow_outside_root=allow_outside_root,
            task=task or "auto",
            stream_cache_gb=stream_cache_gb,
        )
        if given
        else data
    )
    a = run_advise(
        source,
        backbone,
        weights,
        input_size,
        per_class=sample,
        seed=seed,
        progress=SHOW["progress"],
        layout=layout,
        resolution=True,
        engine=engine,
        engine_precision=engine_precision,
    )
    if as_json:
        out.print_json(json.dumps(a.to_dict()))
        return
    show.advice(a, data)


@command
def prepare(
    data: Data,
    out_to: Annotated[
        str,
        typer.Option(
            "--out", help="A new folder, or a URL (s3://bucket/path, gs://..., azure://...) to write the shards to."
        ),
    ],
    backbone: Annotated[str, typer.Option(help="The backbone the shards are resized for.")] = "efficientnet_lite0",
    weights: Weights = "default",
    input_size: ProbeInputSize = None,
    force_input_size: ForceInputSize = False,
    workers: Annotated[
        Optional[int], typer.Option(min=1, help="Processes that decode and write.", show_default="the cores, up to 8")
    ] = None,
    layout: Layout = None,
    val_fraction: ValFraction = 0.2,
    eval_fraction: EvalFraction = 0.2,
    seed: Seed = 0,
    task: Task = None,
) -> None:
    """Write DATA as LitData shards to stream from (each image decoded once, at the input size); resumable."""
    from headstart.preparing import prepare as run_prepare

    check_input_size(input_size, force_input_size)
    shards = run_prepare(
        data,
        out_to,
        backbone=backbone,
        weights=weights or "default",
        input_size=input_size,
        workers=workers,
        layout=layout,
        val_fraction=val_fraction,
        eval_fraction=eval_fraction,
        seed=seed or 0,
        task=task or "auto",
        progress=SHOW["progress"],
    )
    show.prepared(shards)
    out.print(f"Next: [bold]headstart train {shards.location}[/] streams it (--devices N: each rank its share).")
