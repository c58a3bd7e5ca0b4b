"""The ``headstart`` command line: it parses, calls the Python API, and prints.

Exit codes: 0 success, 2 bad input (unknown option, unusable data: the message says why), 1 when
``predict`` could not read some images or an export fails its parity check, 130 after Ctrl-C.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.logging import RichHandler
from rich.markup import escape

from headstart._version import __version__
from headstart.cli import console as show
from headstart.cli.console import err, out
from headstart.cli.options import (
    DATA_HELP,
    INPUT_SIZE_HELP,
    TTA_HELP,
    Accelerator,
    AllowOutsideRoot,
    Average,
    Backbone,
    BatchSize,
    ClassWeights,
    Data,
    Device,
    Devices,
    Epochs,
    ForceInputSize,
    FreezeLayers,
    InputSize,
    Layout,
    LrFind,
    MaxPixels,
    Monitor,
    NumNodes,
    PrintFormat,
    Recipe,
    RunSource,
    Sampler,
    Seed,
    SplitName,
    Strategy,
    TopK,
    Tta,
    Weights,
)
from headstart.config import check_input_size
from headstart.data.images import MAX_PIXELS
from headstart.errors import HeadstartError

app = typer.Typer(
    name="headstart",
    help="Transfer learning for image classification: inspect data, train, compare, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    from headstart.training.distributed import is_main_process

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
    progress = logging.getLogger("headstart.utils.progress")
    progress.handlers, progress.propagate = [lines], False
    progress.setLevel(logging.WARNING if quiet else logging.INFO)
    SHOW["progress"] = not quiet


@command
def inspect(
    data: Data,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Where to write the pictures and inspect.json.", show_default="runs/inspect-<name>")] = None,
    layout: Layout = None,
    val_fraction: Annotated[float, typer.Option(help="Share of training drawn for validation when the data has none.")] = 0.2,
    eval_fraction: Annotated[float, typer.Option(help="Share of training drawn for evaluation when the data has none.")] = 0.2,
    seed: Seed = 0,
    max_pixels: MaxPixels = MAX_PIXELS,
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Counts per split and class, imbalance, image sizes, problems; class_distribution.png and samples.png."""
    from headstart.data import inspection as inspection

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
    from headstart.models.factory import REGISTRY, create_model, list_backbones

    if name is None:
        show.backbones(list_backbones())
    else:
        show.backbone(name, create_model(name, num_classes, weights=weights), REGISTRY.get(name))


@command
def train(
    ctx: typer.Context,
    data: Annotated[Optional[str], typer.Argument(
        help=DATA_HELP + " Not needed with --resume, or a --config that has data:.")] = None,
    backbone: Backbone = None,
    weights: Weights = None,
    strategy: Strategy = None,
    freeze: Annotated[Optional[str], typer.Option(
        help="partial: groups frozen: a count, a fraction, a group name or 'half'.", show_default="half")] = None,
    freeze_layers: FreezeLayers = None,
    recipe: Recipe = None,
    layout: Layout = None,
    allow_outside_root: AllowOutsideRoot = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="A YAML file of options (a run's config.yaml runs it again); flags override it.",
        show_default="none")] = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Head learning rate.", show_default="1e-3 default, 1e-5 seed")] = None,
    backbone_lr: Annotated[Optional[float], typer.Option(
        help="Top backbone group's learning rate.", show_default="1e-4 default, 1e-5 seed")] = None,
    input_size: InputSize = None,
    force_input_size: ForceInputSize = None,
    augment: Annotated[Optional[bool], typer.Option(
        "--augment/--no-augment", help="Random resized crop + flip.", show_default="default on, seed off")] = None,
    early_stopping: Annotated[Optional[int], typer.Option(
        help="Patience in epochs on --monitor; 0 = off.", show_default="5 default, 0 seed")] = None,
    class_weights: ClassWeights = None,
    sampler: Sampler = None,
    monitor: Monitor = None,
    average: Average = None,
    unfreeze_every: Annotated[Optional[int], typer.Option(
        help="gradual: epochs between unfreezing groups.", show_default="2")] = None,
    seed: Seed = None,
    deterministic: Annotated[Optional[bool], typer.Option(
        "--deterministic", help="Deterministic algorithms (slower).", show_default="off")] = None,
    accelerator: Accelerator = None,
    devices: Devices = None,
    num_nodes: NumNodes = None,
    num_workers: Annotated[Optional[int], typer.Option(
        help="DataLoader workers.", show_default="0: images come from a memory-mapped cache")] = None,
    channels_last: Annotated[Optional[bool], typer.Option(
        "--channels-last/--no-channels-last", help="NHWC memory order.", show_default="on")] = None,
    compile: Annotated[Optional[bool], typer.Option(
        "--compile/--no-compile", help="torch.compile the model.", show_default="off")] = None,
    loggers: Annotated[Optional[list[str]], typer.Option(
        "--logger", help="csv, tensorboard, mlflow or wandb, in the run folder; repeatable.", show_default="none")] = None,
    runs_dir: Annotated[Optional[str], typer.Option(help="Where runs go.", show_default="runs")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run folder name.", show_default="backbone-strategy-time")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue an interrupted run (runs/NAME) where it stopped.")] = None,
    tta: Tta = None,
    aug_views: Annotated[Optional[int], typer.Option(
        help="features, partial, half: K augmented views of each training image through the frozen layers once "
             "(fp16); each epoch reads one.", show_default="0: off")] = None,
    aug_views_budget_gb: Annotated[Optional[float], typer.Option(
        help="The most --aug-views may take, memory or disk; K is lowered to fit.", show_default="4.0")] = None,
    lr_find: LrFind = None,
) -> None:
    """Train a pretrained backbone on DATA; writes runs/<name>/ and prints the evaluation accuracy."""
    from headstart.training.distributed import is_main_process
    from headstart.training.fit import fit

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
    run: Annotated[Path, typer.Argument(help="A run folder (runs/NAME).")],
    data: Annotated[Optional[str], typer.Option(
        help="Evaluate on other data with the same classes.", show_default="the run's")] = None,
    split: Annotated[SplitName, typer.Option(help="The split to evaluate.")] = "evaluation",
    device: Device = "auto",
    allow_outside_root: AllowOutsideRoot = False,
    tta: Tta = False,
) -> None:
    """Accuracy, number correct, confusion matrix, per-class scores and top-k of a run's best checkpoint."""
    from headstart.evaluation.evaluate import evaluate
    from headstart.runs.folder import Run

    folder = Run.load(run)
    if allow_outside_root:
        folder.config.allow_outside_root = True
    ev = evaluate(folder, data, split, progress=SHOW["progress"], device=device, tta=tta)
    show.evaluation(ev)
    out.print(f"Wrote {folder.metrics_file(split)}, {folder.confusion_file(split)}, {folder.confusion_file(split, 'png')}")


@command
def compare(
    data: Data,
    strategies: Annotated[str, typer.Option(help=(
        "Comma-separated strategies to compare; 'auto' is the advised one. Add +option[=value] to vary one run: "
        "features,features+tta,features+input_size=224."))] = "features,half,full",
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
    name: Annotated[Optional[str], typer.Option(
        help="Comparison folder name.", show_default="compare-<data>-<time>")] = None,
    layout: Layout = None,
    allow_outside_root: AllowOutsideRoot = None,
    advise: Annotated[bool, typer.Option(
        "--advise/--no-advise", help="Measure the data first; the report shows the advised strategy.")] = True,
    tta: Tta = None,
    lr_find: LrFind = None,
) -> None:
    """Train several strategies on the same data and seed; one report compares them."""
    from headstart.comparison import compare as run_compare
    from headstart.training.distributed import is_main_process

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
    batch_size: BatchSize = None,
    seed: Seed = None,
    accelerator: Accelerator = None,
    layout: Layout = None,
    out_file: Annotated[Path, typer.Option(
        "--out", help="Where to write the plot: a .png or .svg file.")] = Path("lr_find.png"),
) -> None:
    """The learning-rate finder alone: a range test on what train would train; prints the suggested --lr, writes the plot."""
    from headstart.reporting.plots import plot_lr_find
    from headstart.training.fit import find_lr

    options = {k: v for k, v in ctx.params.items() if k not in ("data", "out_file") and v is not None}
    found = find_lr(data, progress=SHOW["progress"], devices="1", **options)
    plot_lr_find(found, out_file)
    if found.suggestion is None:
        raise _fail(f"The loss never fell over {len(found.lrs)} rates: no rate to suggest (plot: {out_file}).", 1)
    out.print(f"Suggested learning rate: {found.suggestion:.3g}  (headstart train {data} --lr {found.suggestion:.3g})")
    out.print(f"{len(found.lrs)} rates tried in {found.seconds:.1f} s. Wrote {out_file}")


@command
def advise(
    data: Data,
    backbone: Annotated[str, typer.Option(help="The backbone to advise for.")] = "efficientnet_lite0",
    weights: Weights = "default",
    input_size: Annotated[Optional[int], typer.Option(help=INPUT_SIZE_HELP, show_default="the weights'")] = None,
    force_input_size: ForceInputSize = False,
    sample: Annotated[int, typer.Option(min=5, help="Images per class probed (a bounded sample).")] = 60,
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the advice as JSON.")] = False,
    layout: Layout = None,
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Measure DATA (size; similarity to the pretraining data): a strategy by the rules, and an input size (2-3 probed)."""
    import json

    from headstart.advice.strategy import advise as run_advise
    from headstart.data.dataset import load_dataset

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
    run: RunSource,
    images: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).")],
    top_k: TopK = 3,
    format: Annotated[PrintFormat, typer.Option("--format", help="How to print them.")] = "table",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    device: Device = "auto",
    tta: Annotated[bool, typer.Option("--tta", help=TTA_HELP + " Twice the compute.")] = False,
) -> None:
    """Classify images with a trained model. Exit 0 if every image was read, 1 if some were not."""
    from headstart.inference.predict import load

    results = load(run, device=device).predict(images, top_k=top_k, batch_size=batch_size, tta=tta)
    show.predictions(results, top_k, format)
    failed = [r for r in results if r.error]
    if failed:
        err.print(f"[yellow]{len(failed)} of {len(results)} image(s) could not be read.[/]")
        raise typer.Exit(1)


@command
def export(
    run: RunSource,
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out_file: Annotated[Optional[Path], typer.Option(
        "--out", help="Output file.", show_default="RUN/export/model.onnx or model.pt")] = None,
) -> None:
    """Export the model (with its class names and preprocessing) and check it against PyTorch."""
    from headstart.inference.export import TOLERANCE
    from headstart.inference.export import export as run_export

    result = run_export(run, format, out_file)
    out.print(f"Wrote {result.path} and {result.sidecar}")
    out.print(f"Parity with PyTorch on {result.samples} sample images: max probability difference "
              f"{result.max_difference:.2e} (allowed {TOLERANCE:g})")


@command
def serve(
    run: RunSource,
    host: Annotated[str, typer.Option(
        help="Address to bind; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    top_k: Annotated[int, typer.Option(min=1, help="Classes returned per image unless a request asks (?top_k=).")] = 3,
    max_upload_mb: Annotated[float, typer.Option(
        min=0.01, max=1024, help="Largest upload per file, in MB (413 beyond).")] = 10.0,
    max_files: Annotated[int, typer.Option(min=1, max=1000, help="Most images per request (413 beyond).")] = 16,
    max_pixels: Annotated[int, typer.Option(min=1, help=(
        "Most pixels (width x height) per image, read from its header before decoding (413 beyond)."))] = MAX_PIXELS,
    max_request_pixels: Annotated[int, typer.Option(min=1, help=(
        "Most pixels per request, all its images together, read from their headers before any is "
        "decoded (413 beyond); at least --max-pixels."))] = 200_000_000,
    max_decodes: Annotated[Optional[int], typer.Option(min=1, show_default="the number of CPUs", help=(
        "Full-size images decoded at once, across all requests (each holds ~3 bytes a pixel until "
        "shrunk); the others wait."))] = None,
    body_timeout: Annotated[float, typer.Option(min=0.1, max=3600, help=(
        "Seconds a client has to send a request's whole body; a slower upload gets 408 and its "
        "connection is closed."))] = 30.0,
    keep_alive_timeout: Annotated[int, typer.Option(min=1, max=3600, help="Seconds an idle connection is kept open.")] = 5,
    limit_concurrency: Annotated[int, typer.Option(min=1, help="Most connections and requests at once (503 beyond).")] = 512,
    device: Device = "auto",
    tta: Annotated[bool, typer.Option(
        "--tta", help=TTA_HELP + " Unless a request asks (?tta=false); twice the compute.")] = False,
) -> None:
    """Serve the model over HTTP: POST /predict, GET /healthz, and a page at / to try photos.

    Every request is bounded by the limits below; an error is JSON {"error": ...} (uvicorn's own 503
    beyond --limit-concurrency is plain text).
    """
    from headstart.inference.predict import load
    from headstart.inference.serve import Limits, create_app, uvicorn_options

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
