"""The ``headstart`` command line: it parses, calls the Python API, and prints.

Exit codes: 0 success, 2 bad input (unknown option, unusable data: the message says why), 1 when
``predict`` could not read some images or an export fails its parity check, 130 after Ctrl-C.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from headstart import show
from headstart._version import __version__
from headstart.config import ACCELERATORS, AVERAGES, CLASS_WEIGHTS, INPUT_SIZES, MONITORS, RECIPES, SAMPLERS, STRATEGIES, check_input_size
from headstart.errors import HeadstartError
from headstart.images import MAX_PIXELS
from headstart.layouts import LAYOUTS, SPLITS
from headstart.show import err, out

app = typer.Typer(
    name="headstart",
    help="Transfer learning for image classification: inspect data, train, compare, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Choices: validated, shown in --help and completed, from the lists the library checks against.
StrategyName = Literal[(*STRATEGIES, "auto")]
RecipeName = Literal[tuple(RECIPES)]
LayoutName = Literal[LAYOUTS]
AcceleratorName = Literal[ACCELERATORS]
SplitName = Literal[SPLITS]
PrintFormat = Literal["table", "json", "csv"]
ClassWeights, Sampler, Monitor, Average = Literal[CLASS_WEIGHTS], Literal[SAMPLERS], Literal[MONITORS], Literal[AVERAGES]

DATA_HELP = "Dataset folder (food11, folders layout), CSV manifest, or the word 'demo'."
INPUT_SIZE_HELP = f"Input size in pixels, {INPUT_SIZES.low:g}-{INPUT_SIZES.high:g}."
AUTO_SIZE_HELP = INPUT_SIZE_HELP[:-1] + ", or auto: the size headstart advise measures best (2-3 sizes probed first)."
FORCE_HELP = "Allow an --input-size outside that range."
OUTSIDE_HELP = "Let a CSV manifest list images outside its own folder."
TTA_HELP = "Test-time augmentation: also average each image's probabilities with its mirror image's."
WEIGHTS_HELP = "auto: weigh each class's loss by its inverse frequency, N / (C * n_c) (imbalanced data)."
SAMPLER_HELP = "balanced: each epoch draws every class equally often (with replacement)."
LR_FIND_HELP = "Run the learning-rate finder first and train the head at the rate it suggests (one device)."
MONITOR_HELP = "What the best checkpoint and early stopping go by (val_loss lowest, the others highest)."


def _fail(message: str, code: int = 2) -> typer.Exit:
    from headstart.distributed import is_main_process

    if is_main_process():  # with several ranks, they all stop; rank 0 says why
        err.print(f"[bold red]error:[/] {escape(message)}")  # a message's own brackets are not markup
    return typer.Exit(code)


def command(fn):
    """``app.command()``, and the one place where bad input becomes a message and an exit code
    (``HeadstartError.exit_code``: 2) instead of a traceback."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HeadstartError as e:
            raise _fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C outside training (which stops cleanly and says how to resume)
            raise _fail("Interrupted.", 130) from None

    return app.command()(run)


SHOW = {"progress": True}  # off with --quiet


def _version(value: bool) -> None:
    if value:
        out.print(f"headstart {__version__}")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug messages."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress: neither bars (in a terminal) nor lines (off one)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    # Library code logs; the CLI shows warnings (skipped images, ...) through rich on stderr.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_time=False, show_path=False)],
        force=True,
    )
    # Progress off a terminal (a line an epoch, a line each ~10 % of a long pass), plain, on stderr.
    lines = logging.StreamHandler(sys.stderr)
    lines.setFormatter(logging.Formatter("%(message)s"))
    progress = logging.getLogger("headstart.progress")
    progress.handlers, progress.propagate = [lines], False
    progress.setLevel(logging.WARNING if quiet else logging.INFO)
    SHOW["progress"] = not quiet


@command
def inspect(
    data: str = typer.Argument(..., help=DATA_HELP),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", help="Where to write the pictures and inspect.json.", show_default="runs/inspect-<name>"
    ),
    layout: Optional[LayoutName] = typer.Option(
        None, help=f"Force a layout: {', '.join(LAYOUTS)}.", show_default="detected"
    ),
    val_fraction: float = typer.Option(0.2, help="Share of training drawn for validation when the data has none."),
    eval_fraction: float = typer.Option(0.2, help="Share of training drawn for evaluation when the data has none."),
    seed: int = typer.Option(0, help="Seed for drawn splits and the sample grid."),
    max_pixels: int = typer.Option(MAX_PIXELS, help="Refuse images with more pixels (decompression bombs)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help=OUTSIDE_HELP),
) -> None:
    """Counts per split and class, imbalance, image sizes, problems; class_distribution.png and samples.png."""
    from headstart import inspection

    if out_dir is None:
        out_dir = Path("runs") / f"inspect-{'demo' if data == 'demo' else Path(data).resolve().name}"
    summary = inspection.inspect_dataset(data, out_dir, layout=layout, val_fraction=val_fraction,
                                         eval_fraction=eval_fraction, seed=seed, max_pixels=max_pixels,
                                         progress=SHOW["progress"], allow_outside_root=allow_outside_root)
    show.summary(summary)
    out.print(f"Wrote {out_dir / inspection.DISTRIBUTION_PNG}, {out_dir / inspection.SAMPLES_PNG}, "
              f"{out_dir / inspection.SUMMARY_JSON}")


@command
def backbones(
    name: Optional[str] = typer.Argument(None, help="Show one backbone's groups and preprocessing (any timm name)."),
    weights: str = typer.Option("none", help="With NAME: load these weights (default, bundled, hub, none, or a file)."),
    num_classes: int = typer.Option(11, help="With NAME: classes of the head (11 as in Food-11)."),
) -> None:
    """List the curated backbones, or show one: parameters, freezable groups, preprocessing."""
    from headstart import backbones as hs_bb

    if name is None:
        table = Table(title="Backbones (any timm model name works too)")
        for col in ("name", "parameters", "groups", "input", "weights"):
            table.add_column(col, justify="left" if col in ("name", "weights") else "right", no_wrap=True)
        for row in hs_bb.list_backbones():
            table.add_row(row["name"], f"{row['params']:,}", str(row["groups"]), str(row["input_size"]), row["weights"])
        out.print(table)
        return
    model = hs_bb.create_model(name, num_classes, weights=weights)
    total, body = hs_bb.count_params(model), hs_bb.count_params(model.body)
    out.print(f"[bold]{name}[/]: {total:,} parameters ({body:,} in the backbone, {total - body:,} in the head)")
    table = Table(title="Freezable groups, input to output")
    for col in ("#", "group", "parameters"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for i, g in enumerate(model.groups):
        table.add_row(str(i), g.name, f"{g.num_params():,}")
    out.print(table)
    info = hs_bb.REGISTRY.get(name)
    if info:
        out.print(f"Hub weights: {info.hub_tag}" + (f" ({info.note})" if info.note else ""))
    out.print(f"Preprocessing: {model.preprocessing.to_dict()}")


@command
def train(
    ctx: typer.Context,
    data: Optional[str] = typer.Argument(None, help=DATA_HELP + " Not needed with --resume, or a --config that has data:."),
    backbone: Optional[str] = typer.Option(None, help="Curated name or any timm model.", show_default="efficientnet_lite0"),
    weights: Optional[str] = typer.Option(None, help="default, bundled, hub, none, or a file.", show_default="default"),
    strategy: Optional[StrategyName] = typer.Option(None, help="features, partial, half, full, gradual, scratch, or auto (headstart advise).", show_default="features"),
    freeze: Optional[str] = typer.Option(None, help="partial: groups frozen: a count, a fraction, a group name or 'half'.", show_default="half"),
    freeze_layers: Optional[int] = typer.Option(None, help="partial, vgg16: Keras layers frozen (the tutorial's half: 10).", show_default="by groups"),
    recipe: Optional[RecipeName] = typer.Option(None, help="default (AdamW, cosine, augmentation...) or seed (the tutorial's).", show_default="default"),
    layout: Optional[LayoutName] = typer.Option(None, help=f"Force a layout: {', '.join(LAYOUTS)}.", show_default="detected"),
    allow_outside_root: Optional[bool] = typer.Option(None, "--allow-outside-root", help=OUTSIDE_HELP, show_default="off"),
    config: Optional[Path] = typer.Option(None, "--config", help="A YAML file of options (a run's config.yaml runs it again); flags override it.", show_default="none"),
    epochs: Optional[int] = typer.Option(None, help="Epochs.", show_default="recipe: 15 default, 10 seed"),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size, shared among the devices.", show_default="32"),
    lr: Optional[float] = typer.Option(None, help="Head learning rate.", show_default="1e-3 default, 1e-5 seed"),
    backbone_lr: Optional[float] = typer.Option(None, help="Top backbone group's learning rate.", show_default="1e-4 default, 1e-5 seed"),
    input_size: Optional[str] = typer.Option(None, help=AUTO_SIZE_HELP, show_default="the weights': 224"),
    force_input_size: Optional[bool] = typer.Option(None, "--force-input-size", help=FORCE_HELP, show_default="off"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random resized crop + flip.", show_default="default on, seed off"),
    early_stopping: Optional[int] = typer.Option(None, help="Patience in epochs on --monitor; 0 = off.", show_default="5 default, 0 seed"),
    class_weights: Optional[ClassWeights] = typer.Option(None, help=WEIGHTS_HELP, show_default="none"),
    sampler: Optional[Sampler] = typer.Option(None, help=SAMPLER_HELP, show_default="random"),
    monitor: Optional[Monitor] = typer.Option(None, help=MONITOR_HELP, show_default="val_loss"),
    average: Optional[Average] = typer.Option(None, help="Weight averaging of what trains: ema (every step) or swa (last quarter's epochs); validated and saved averaged.", show_default="none"),
    unfreeze_every: Optional[int] = typer.Option(None, help="gradual: epochs between unfreezing groups.", show_default="2"),
    seed: Optional[int] = typer.Option(None, help="Random seed.", show_default="0"),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic", help="Deterministic algorithms (slower).", show_default="off"),
    accelerator: Optional[AcceleratorName] = typer.Option(None, help="cpu, gpu or auto (a GPU where there is one).", show_default="auto"),
    devices: Optional[str] = typer.Option(None, help="Devices per machine, one process each: a count, ids (0,1), or auto.", show_default="auto: every GPU, or 1 CPU process"),
    num_nodes: Optional[int] = typer.Option(None, help="Machines, for torchrun or SLURM.", show_default="1"),
    num_workers: Optional[int] = typer.Option(None, help="DataLoader workers.", show_default="0: images come from a memory-mapped cache"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory order.", show_default="on"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model.", show_default="off"),
    loggers: Optional[list[str]] = typer.Option(None, "--logger", help="csv, tensorboard, mlflow or wandb, in the run folder; repeatable.", show_default="none"),
    runs_dir: Optional[str] = typer.Option(None, help="Where runs go.", show_default="runs"),
    name: Optional[str] = typer.Option(None, help="Run folder name.", show_default="backbone-strategy-time"),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run (runs/NAME) where it stopped."),
    tta: Optional[bool] = typer.Option(None, "--tta", help=TTA_HELP + " Both accuracies are recorded.", show_default="off"),
    aug_views: Optional[int] = typer.Option(None, help="features, partial, half: K augmented views of each training image through the frozen layers once (fp16); each epoch reads one.", show_default="0: off"),
    aug_views_budget_gb: Optional[float] = typer.Option(None, help="The most --aug-views may take, memory or disk; K is lowered to fit.", show_default="4.0"),
    lr_find: Optional[bool] = typer.Option(None, "--lr-find", help=LR_FIND_HELP, show_default="off"),
) -> None:
    """Train a pretrained backbone on DATA; writes runs/<name>/ and prints the evaluation accuracy."""
    from headstart.distributed import is_main_process
    from headstart.training import fit

    # Every option given on the command line, as TrainConfig fields.
    options = {k: v for k, v in ctx.params.items() if k not in ("data", "config", "resume") and v is not None}
    run = fit(data, config_file=config, resume=resume, progress=SHOW["progress"], **options)
    if not is_main_process():  # the other ranks of a distributed run: rank 0 reports
        return
    if run.interrupted:
        if run.last_checkpoint.exists():
            err.print(f"[yellow]Interrupted.[/] Resume with: headstart train --resume {run.dir}")
        raise typer.Exit(130)
    show.training(run)


@command
def evaluate(
    run: Path = typer.Argument(..., help="A run folder (runs/NAME)."),
    data: Optional[str] = typer.Option(None, help="Evaluate on other data with the same classes.", show_default="the run's"),
    split: SplitName = typer.Option("evaluation", help="The split to evaluate."),
    device: str = typer.Option("auto", help="auto (a GPU where there is one), cpu, gpu or cuda:N."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help=OUTSIDE_HELP, show_default="the run's"),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP + " Both accuracies are shown and recorded."),
) -> None:
    """Accuracy, number correct, confusion matrix, per-class scores and top-k of a run's best checkpoint."""
    from headstart.evaluation import evaluate
    from headstart.runs import Run

    folder = Run.load(run)
    if allow_outside_root:
        folder.config.allow_outside_root = True
    ev = evaluate(folder, data, split, progress=SHOW["progress"], device=device, tta=tta)
    show.evaluation(ev)
    out.print(f"Wrote {folder.metrics_file(split)}, {folder.confusion_file(split)}, {folder.confusion_file(split, 'png')}")


@command
def compare(
    data: str = typer.Argument(..., help=DATA_HELP),
    strategies: str = typer.Option("features,half,full", help=("Comma-separated strategies to compare; 'auto' is the advised one. Add +option[=value] to "
                                          "vary one run: features,features+tta,features+input_size=224.")),
    backbone: Optional[str] = typer.Option(None, help="Backbone for every strategy.", show_default="efficientnet_lite0"),
    weights: Optional[str] = typer.Option(None, help="default, bundled, hub, none, or a file.", show_default="default"),
    recipe: Optional[RecipeName] = typer.Option(None, help="default or seed (the tutorial's).", show_default="default"),
    freeze_layers: Optional[int] = typer.Option(None, help="vgg16: Keras layers frozen by 'half' (the tutorial: 10).", show_default="by groups"),
    epochs: Optional[int] = typer.Option(None, help="Epochs per strategy.", show_default="recipe's"),
    input_size: Optional[str] = typer.Option(None, help=AUTO_SIZE_HELP, show_default="the weights': 224"),
    force_input_size: Optional[bool] = typer.Option(None, "--force-input-size", help=FORCE_HELP, show_default="off"),
    batch_size: Optional[int] = typer.Option(None, help="Global batch size, shared among the devices.", show_default="32"),
    seed: Optional[int] = typer.Option(None, help="Random seed, the same for every strategy.", show_default="0"),
    class_weights: Optional[ClassWeights] = typer.Option(None, help=WEIGHTS_HELP, show_default="none"),
    sampler: Optional[Sampler] = typer.Option(None, help=SAMPLER_HELP, show_default="random"),
    monitor: Optional[Monitor] = typer.Option(None, help=MONITOR_HELP, show_default="val_loss"),
    accelerator: Optional[AcceleratorName] = typer.Option(None, help="cpu, gpu or auto.", show_default="auto"),
    devices: Optional[str] = typer.Option(None, help="Devices per machine, one process each.", show_default="auto"),
    num_nodes: Optional[int] = typer.Option(None, help="Machines, for torchrun or SLURM.", show_default="1"),
    runs_dir: str = typer.Option("runs", help="Where the comparison folder goes."),
    name: Optional[str] = typer.Option(None, help="Comparison folder name.", show_default="compare-<data>-<time>"),
    layout: Optional[LayoutName] = typer.Option(None, help=f"Force a layout: {', '.join(LAYOUTS)}.", show_default="detected"),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help=OUTSIDE_HELP),
    advise: bool = typer.Option(True, "--advise/--no-advise", help="Measure the data first; the report shows the advised strategy."),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP + " Both accuracies are shown."),
    lr_find: bool = typer.Option(False, "--lr-find", help=LR_FIND_HELP + " Each run finds its own (or: features+lr_find)."),
) -> None:
    """Train several strategies on the same data and seed; one report compares them."""
    from headstart.comparison import compare as run_compare
    from headstart.distributed import is_main_process

    options = {k: v for k, v in dict(backbone=backbone, weights=weights, recipe=recipe, epochs=epochs,
                                      input_size=input_size, force_input_size=force_input_size, batch_size=batch_size,
                                      seed=seed, accelerator=accelerator, devices=devices, num_nodes=num_nodes, layout=layout,
                                      class_weights=class_weights, sampler=sampler, monitor=monitor,
                                      allow_outside_root=allow_outside_root or None, tta=tta or None,
                                      lr_find=lr_find or None).items() if v is not None}
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if freeze_layers is not None:
        options["freeze_layers"] = freeze_layers  # for half and partial only
    result = run_compare(data, names, runs_dir=runs_dir, name=name, progress=SHOW["progress"], advise=advise, **options)
    if result.interrupted:
        last = list(result.runs.values())[-1]
        raise _fail(f"Interrupted. Resume the unfinished run with: headstart train --resume {last.dir}", 130)
    if not is_main_process():
        return
    show.comparison(result, tta)
    out.print(f"Report: {result.report}")


@command
def lr_find(
    ctx: typer.Context,
    data: str = typer.Argument(..., help=DATA_HELP),
    strategy: Optional[StrategyName] = typer.Option(None, help="The strategy whose training is tested.", show_default="features"),
    backbone: Optional[str] = typer.Option(None, help="Curated name or any timm model.", show_default="efficientnet_lite0"),
    weights: Optional[str] = typer.Option(None, help="default, bundled, hub, none, or a file.", show_default="default"),
    recipe: Optional[RecipeName] = typer.Option(None, help="default or seed (the tutorial's).", show_default="default"),
    input_size: Optional[str] = typer.Option(None, help=AUTO_SIZE_HELP, show_default="the weights': 224"),
    force_input_size: Optional[bool] = typer.Option(None, "--force-input-size", help=FORCE_HELP, show_default="off"),
    batch_size: Optional[int] = typer.Option(None, help="Batch size, as training's.", show_default="32"),
    seed: Optional[int] = typer.Option(None, help="Random seed.", show_default="0"),
    accelerator: Optional[AcceleratorName] = typer.Option(None, help="cpu, gpu or auto.", show_default="auto"),
    layout: Optional[LayoutName] = typer.Option(None, help=f"Force a layout: {', '.join(LAYOUTS)}.", show_default="detected"),
    out_file: Path = typer.Option(Path("lr_find.png"), "--out", help="Where to write the plot: a .png or .svg file."),
) -> None:
    """The learning-rate finder alone: a range test on what train would train; prints the suggested --lr, writes the plot."""
    from headstart.plots import plot_lr_find
    from headstart.training import find_lr

    options = {k: v for k, v in ctx.params.items() if k not in ("data", "out_file") and v is not None}
    found = find_lr(data, progress=SHOW["progress"], devices="1", **options)
    plot_lr_find(found, out_file)
    if found.suggestion is None:
        raise _fail(f"The loss never fell over {len(found.lrs)} rates: no rate to suggest (plot: {out_file}).", 1)
    out.print(f"Suggested learning rate: {found.suggestion:.3g}  (headstart train {data} --lr {found.suggestion:.3g})")
    out.print(f"{len(found.lrs)} rates tried in {found.seconds:.1f} s. Wrote {out_file}")


@command
def advise(
    data: str = typer.Argument(..., help=DATA_HELP),
    backbone: str = typer.Option("efficientnet_lite0", help="The backbone to advise for."),
    weights: str = typer.Option("default", help="default, bundled, hub, none, or a file.", show_default="default"),
    input_size: Optional[int] = typer.Option(None, help=INPUT_SIZE_HELP, show_default="the weights'"),
    force_input_size: bool = typer.Option(False, "--force-input-size", help=FORCE_HELP, show_default="off"),
    sample: int = typer.Option(60, min=5, help="Images per class probed (a bounded sample)."),
    seed: int = typer.Option(0, help="Seed of the sample and of drawn splits."),
    as_json: bool = typer.Option(False, "--json", help="Print the advice as JSON."),
    layout: Optional[LayoutName] = typer.Option(None, help=f"Force a layout: {', '.join(LAYOUTS)}.", show_default="detected"),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help=OUTSIDE_HELP),
) -> None:
    """Measure DATA (size; similarity to the pretraining data): a strategy by the rules, and an input size (2-3 probed)."""
    import json

    from headstart.advice import advise as run_advise
    from headstart.data import load_dataset

    check_input_size(input_size, force_input_size)  # as train checks it
    source = load_dataset(data, layout, seed=seed, allow_outside_root=True) if allow_outside_root else data
    a = run_advise(source, backbone, weights, input_size, per_class=sample, seed=seed, progress=SHOW["progress"],
                   layout=layout, resolution=True)
    if as_json:
        out.print_json(json.dumps(a.to_dict()))
        return
    show.advice(a, data)


@command
def predict(
    run: Path = typer.Argument(..., help="A run folder (runs/NAME), a .ckpt checkpoint or a saved .safetensors model."),
    images: list[Path] = typer.Argument(..., help="Image files and folders (walked recursively)."),
    top_k: int = typer.Option(3, min=1, help="Classes shown per image."),
    format: PrintFormat = typer.Option("table", "--format", help="How to print them."),
    batch_size: int = typer.Option(32, min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto (a GPU where there is one), cpu, gpu or cuda:N."),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP + " Twice the compute."),
) -> None:
    """Classify images with a trained model. Exit 0 if every image was read, 1 if some were not."""
    from headstart.predict import load

    results = load(run, device=device).predict(images, top_k=top_k, batch_size=batch_size, tta=tta)
    show.predictions(results, top_k, format)
    failed = [r for r in results if r.error]
    if failed:
        err.print(f"[yellow]{len(failed)} of {len(results)} image(s) could not be read.[/]")
        raise typer.Exit(1)


@command
def export(
    run: Path = typer.Argument(..., help="A run folder (runs/NAME), a .ckpt checkpoint or a saved .safetensors model."),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Output file.", show_default="RUN/export/model.onnx or model.pt"),
) -> None:
    """Export the model (with its class names and preprocessing) and check it against PyTorch."""
    from headstart.exporting import TOLERANCE
    from headstart.exporting import export as run_export

    result = run_export(run, format, out_file)
    out.print(f"Wrote {result.path} and {result.sidecar}")
    out.print(f"Parity with PyTorch on {result.samples} sample images: max probability difference "
              f"{result.max_difference:.2e} (allowed {TOLERANCE:g})")


@command
def serve(
    run: Path = typer.Argument(..., help="A run folder (runs/NAME), a .ckpt checkpoint or a saved .safetensors model."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port."),
    top_k: int = typer.Option(3, min=1, help="Classes returned per image unless a request asks (?top_k=)."),
    max_upload_mb: float = typer.Option(10.0, min=0.01, max=1024, help="Largest upload per file, in MB (413 beyond)."),
    max_files: int = typer.Option(16, min=1, max=1000, help="Most images per request (413 beyond)."),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, help=(
        "Most pixels (width x height) per image, read from its header before decoding (413 beyond).")),
    max_request_pixels: int = typer.Option(200_000_000, min=1, help=(
        "Most pixels per request, all its images together, read from their headers before any is "
        "decoded (413 beyond); at least --max-pixels.")),
    max_decodes: Optional[int] = typer.Option(None, min=1, show_default="the number of CPUs", help=(
        "Full-size images decoded at once, across all requests (each holds ~3 bytes a pixel until "
        "shrunk); the others wait.")),
    body_timeout: float = typer.Option(30.0, min=0.1, max=3600, help=(
        "Seconds a client has to send a request's whole body; a slower upload gets 408 and its "
        "connection is closed.")),
    keep_alive_timeout: int = typer.Option(5, min=1, max=3600, help="Seconds an idle connection is kept open."),
    limit_concurrency: int = typer.Option(512, min=1, help="Most connections and requests at once (503 beyond)."),
    device: str = typer.Option("auto", help="auto (a GPU where there is one), cpu, gpu or cuda:N."),
    tta: bool = typer.Option(False, "--tta", help=TTA_HELP + " Unless a request asks (?tta=false); twice the compute."),
) -> None:
    """Serve the model over HTTP: POST /predict, GET /healthz, and a page at / to try photos.

    Every request is bounded by the limits below; an error is JSON {"error": ...} (uvicorn's own 503
    beyond --limit-concurrency is plain text).
    """
    from headstart.predict import load
    from headstart.serve import Limits, create_app, uvicorn_options

    limits = Limits(max_upload_mb=max_upload_mb, max_files=max_files, max_pixels=max_pixels,
                    max_request_pixels=max_request_pixels, body_timeout=body_timeout,
                    keep_alive_timeout=keep_alive_timeout, limit_concurrency=limit_concurrency, top_k=top_k,
                    **({"max_decodes": max_decodes} if max_decodes else {}))  # checked before the model loads
    predictor = load(run, max_pixels=max_pixels, device=device)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]Binding to {host}: anyone who can reach this machine can use the model.[/]")
    import uvicorn

    app_ = create_app(predictor, limits, tta=tta)
    out.print(f"Serving {run} on http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(app_, host=host, port=port, **uvicorn_options(limits))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
