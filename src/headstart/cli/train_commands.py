"""The commands that train and measure: ``train``, ``evaluate``, ``compare``, ``lr-find``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.cli import console as show
from headstart.cli.app import SHOW, _fail, command
from headstart.cli.console import out
from headstart.cli.options import (
    DATA_HELP,
    Accelerator,
    AllowOutsideRoot,
    AugViews,
    Average,
    Backbone,
    BatchSize,
    ClassWeights,
    Data,
    Device,
    Devices,
    EngineOption,
    EnginePrecision,
    Epochs,
    Exclude,
    ForceInputSize,
    FreezeLayers,
    HeadSearchOption,
    InputSize,
    Layout,
    LrFind,
    Monitor,
    NumNodes,
    Recipe,
    Sampler,
    Seed,
    SplitName,
    Strategy,
    StreamCacheGb,
    Task,
    Tta,
    Weights,
)
from headstart.utils.files import check_writable_dir


@command
def train(
    ctx: typer.Context,
    data: Annotated[
        Optional[str], typer.Argument(help=DATA_HELP + " Not needed with --resume, or a --config that has data:.")
    ] = None,
    backbone: Backbone = None,
    weights: Weights = None,
    strategy: Strategy = None,
    freeze: Annotated[
        Optional[str],
        typer.Option(help="partial: groups frozen: a count, a fraction, a group name or 'half'.", show_default="half"),
    ] = None,
    freeze_layers: FreezeLayers = None,
    recipe: Recipe = None,
    layout: Layout = None,
    task: Task = None,
    allow_outside_root: AllowOutsideRoot = None,
    exclude: Exclude = None,
    stream_cache_gb: StreamCacheGb = None,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            help="A YAML file of options (a run's config.yaml runs it again); flags override it.",
            show_default="none",
        ),
    ] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Annotated[
        Optional[float], typer.Option(help="Head learning rate.", show_default="1e-3 default, 1e-5 seed")
    ] = None,
    backbone_lr: Annotated[
        Optional[float],
        typer.Option(help="Top backbone group's learning rate.", show_default="1e-4 default, 1e-5 seed"),
    ] = None,
    input_size: InputSize = None,
    force_input_size: ForceInputSize = None,
    augment: Annotated[
        Optional[bool],
        typer.Option("--augment/--no-augment", help="Random resized crop + flip.", show_default="default on, seed off"),
    ] = None,
    early_stopping: Annotated[
        Optional[int], typer.Option(help="Patience in epochs on --monitor; 0 = off.", show_default="5 default, 0 seed")
    ] = None,
    class_weights: ClassWeights = None,
    sampler: Sampler = None,
    monitor: Monitor = None,
    average: Average = None,
    unfreeze_every: Annotated[
        Optional[int], typer.Option(help="gradual: epochs between unfreezing groups.", show_default="2")
    ] = None,
    seed: Seed = None,
    deterministic: Annotated[
        Optional[bool], typer.Option("--deterministic", help="Deterministic algorithms (slower).", show_default="off")
    ] = None,
    accelerator: Accelerator = None,
    devices: Devices = None,
    num_nodes: NumNodes = None,
    num_workers: Annotated[
        Optional[int],
        typer.Option(help="DataLoader workers.", show_default="0: images come from a memory-mapped cache"),
    ] = None,
    channels_last: Annotated[
        Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory order.", show_default="on")
    ] = None,
    compile: Annotated[
        Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model.", show_default="off")
    ] = None,
    loggers: Annotated[
        Optional[list[str]],
        typer.Option(
            "--logger", help="csv, tensorboard, mlflow or wandb, in the run folder; repeatable.", show_default="none"
        ),
    ] = None,
    runs_dir: Annotated[Optional[str], typer.Option(help="Where runs go.", show_default="runs")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run folder name.", show_default="backbone-strategy-time")] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="Continue an interrupted run (runs/NAME) where it stopped.")
    ] = None,
    tta: Tta = None,
    aug_views: AugViews = None,
    engine: EngineOption = None,
    engine_precision: EnginePrecision = None,
    aug_views_budget_gb: Annotated[
        Optional[float],
        typer.Option(help="The most --aug-views may take, memory or disk; K is lowered to fit.", show_default="4.0"),
    ] = None,
    lr_find: LrFind = None,
    head_search: HeadSearchOption = None,
) -> None:
    """Train a pretrained backbone on DATA; writes runs/<name>/ and prints the evaluation accuracy."""
    from headstart.training.distributed import is_main_process
    from headstart.training.fit import fit

    # Every option given on the command line, as TrainConfig fields.
    options = {k: v for k, v in ctx.params.items() if k not in ("data", "config", "resume") and v is not None}
    run = fit(data, config_file=config, resume=resume, progress=SHOW["progress"], **options)
    if not is_main_process():  # the other ranks of a distributed run: rank 0 reports
        return
    if run.interrupted:  # fit said how to resume
        raise typer.Exit(130)
    show.training(run)


@command
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run folder (runs/NAME).")],
    data: Annotated[
        Optional[str], typer.Option(help="Evaluate on other data with the same classes.", show_default="the run's")
    ] = None,
    split: Annotated[SplitName, typer.Option(help="The split to evaluate.")] = "evaluation",
    device: Device = "auto",
    allow_outside_root: Annotated[
        bool,
        typer.Option(
            "--allow-outside-root",
            help="Let a CSV manifest list images outside its own folder.",
            show_default="the run's",
        ),
    ] = False,
    tta: Tta = False,
    engine: EngineOption = "auto",
    engine_precision: EnginePrecision = "fp32",
) -> None:
    """Accuracy, number correct, confusion matrix, per-class scores and top-k of a run's best checkpoint."""
    from headstart.evaluation.evaluate import evaluate
    from headstart.runs.folder import Run

    folder = Run.load(run)
    if allow_outside_root:
        folder.config.allow_outside_root = True
    ev = evaluate(
        folder,
        data,
        split,
        progress=SHOW["progress"],
        device=device,
        tta=tta,
        engine=engine,
        engine_precision=engine_precision,
    )
    show.evaluation(ev)
    out.print(
        f"Wrote {folder.metrics_file(split)}, {folder.confusion_file(split)}, {folder.confusion_file(split, 'png')}"
    )


@command
def compare(
    data: Data,
    strategies: Annotated[
        str,
        typer.Option(
            help=(
                "Comma-separated strategies to compare; 'auto' is the advised one. Add +option[=value] to vary "
                "one run: features,features+tta,features+input_size=224."
            )
        ),
    ] = "features,half,full",
    backbone: Backbone = None,
    weights: Weights = None,
    recipe: Recipe = None,
    freeze_layers: FreezeLayers = None,
    epochs: Epochs = None,
    input_size: InputSize = None,
    force_input_size: ForceInputSize = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    class_weights: ClassWeights = None,
    sampler: Sampler = None,
    monitor: Monitor = None,
    accelerator: Accelerator = None,
    devices: Devices = None,
    num_nodes: NumNodes = None,
    runs_dir: Annotated[str, typer.Option(help="Where the comparison folder goes.")] = "runs",
    name: Annotated[
        Optional[str], typer.Option(help="Comparison folder name.", show_default="compare-<data>-<time>")
    ] = None,
    layout: Layout = None,
    task: Task = None,
    allow_outside_root: AllowOutsideRoot = None,
    exclude: Exclude = None,
    stream_cache_gb: StreamCacheGb = None,
    advise: Annotated[
        bool,
        typer.Option("--advise/--no-advise", help="Measure the data first; the report shows the advised strategy."),
    ] = True,
    tta: Tta = None,
    lr_find: LrFind = None,
    engine: EngineOption = None,
    engine_precision: EnginePrecision = None,
    head_search: HeadSearchOption = None,
) -> None:
    """Train several strategies on the same data and seed; one report compares them."""
    from headstart.comparison import compare as run_compare
    from headstart.training.distributed import is_main_process

    options = {
        k: v
        for k, v in dict(
            backbone=backbone,
            weights=weights,
            recipe=recipe,
            epochs=epochs,
            input_size=input_size,
            force_input_size=force_input_size,
            batch_size=batch_size,
            seed=seed,
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            layout=layout,
            task=task,
            class_weights=class_weights,
            sampler=sampler,
            monitor=monitor,
            allow_outside_root=allow_outside_root or None,
            exclude=exclude,
            stream_cache_gb=stream_cache_gb,
            tta=tta or None,
            lr_find=lr_find or None,
            engine=engine,
            engine_precision=engine_precision,
            head_search=head_search,
        ).items()
        if v is not None
    }
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if freeze_layers is not None:
        options["freeze_layers"] = freeze_layers  # for half and partial only
    result = run_compare(data, names, runs_dir=runs_dir, name=name, progress=SHOW["progress"], advise=advise, **options)
    if result.interrupted:
        last = list(result.runs.values())[-1]
        raise _fail(f"Interrupted. Resume the unfinished run with: headstart train --resume {last.dir}", 130)
    if not is_main_process():
        return
    show.comparison(result, bool(tta))
    out.print(f"Report: {result.report}")


@command
def lr_find(
    ctx: typer.Context,
    data: Data,
    strategy: Strategy = None,
    backbone: Backbone = None,
    weights: Weights = None,
    recipe: Recipe = None,
    input_size: InputSize = None,
    force_input_size: ForceInputSize = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size, as training's.", show_default="32")] = None,
    seed: Seed = None,
    accelerator: Accelerator = None,
    layout: Layout = None,
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the plot: a .png or .svg file.")] = Path(
        "lr_find.png"
    ),
) -> None:
    """The learning-rate finder alone: a range test on what train would train; prints the --lr, writes the plot."""
    from headstart.reporting.plots import plot_lr_find
    from headstart.training.fit import find_lr

    if out_file.suffix.lower() not in (".png", ".svg") or out_file.is_dir():
        raise _fail(f"--out is the plot's file: a .png or .svg. Received: --out {out_file}")
    check_writable_dir(out_file.parent, "--out")  # before the sweep, not after it
    options = {k: v for k, v in ctx.params.items() if k not in ("data", "out_file") and v is not None}
    found = find_lr(data, progress=SHOW["progress"], devices="1", **options)
    plot_lr_find(found, out_file)
    if found.suggestion is None:
        raise _fail(f"The loss never fell over {len(found.lrs)} rates: no rate to suggest (plot: {out_file}).", 1)
    out.print(f"Suggested learning rate: {found.suggestion:.3g}  (headstart train {data} --lr {found.suggestion:.3g})")
    out.print(f"{len(found.lrs)} rates tried in {found.seconds:.1f} s. Wrote {out_file}")
