"""The commands that use a trained model: ``predict``, ``export``, ``serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.cli import console as show
from headstart.cli.app import _fail, command
from headstart.cli.console import err, out
from headstart.cli.options import (
    TTA_HELP,
    Device,
    EngineOption,
    EnginePrecision,
    ExplainMethod,
    ModelSource,
    PrintFormat,
    RunSource,
    Threshold,
    TopK,
)
from headstart.data.images import MAX_PIXELS


@command
def predict(
    run: ModelSource,
    images: Annotated[list[Path], typer.Argument(help="Image files and folders (walked recursively).")],
    top_k: TopK = 3,
    threshold: Threshold = None,
    format: Annotated[PrintFormat, typer.Option("--format", help="How to print them.")] = "table",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 32,
    device: Device = "auto",
    tta: Annotated[bool, typer.Option("--tta", help=TTA_HELP + " Twice the compute.")] = False,
    engine: EngineOption = "auto",
    engine_precision: EnginePrecision = "fp32",
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="Also write a PNG per image: the photo, where the model saw its class, the top classes."
        ),
    ] = False,
    method: Annotated[
        ExplainMethod, typer.Option(help="With --explain: how the map is computed (the grad-cam library).")
    ] = "gradcam",
    out_dir: Annotated[
        Optional[Path],
        typer.Option("--out", help="With --explain: where the PNG files go.", show_default="runs/explain-<model>"),
    ] = None,
) -> None:
    """Classify images with a trained model. Exit 0 if every image was read, 1 if some were not."""
    from headstart.inference.loading import load

    if explain and tta:
        raise _fail("--explain maps one view of each image; --tta averages two. Use one or the other.")
    predictor = load(run, device=device, engine=engine, engine_precision=engine_precision)
    if explain:
        from headstart.inference.explain import write_explanations

        results = predictor.explain(images, method=method, top_k=top_k, batch_size=batch_size, threshold=threshold)
        folder = out_dir or Path("runs") / f"explain-{Path(run).resolve().name}"
        written = write_explanations(results, folder)
    else:
        results = predictor.predict(images, top_k=top_k, batch_size=batch_size, tta=tta, threshold=threshold)
    show.predictions(results, top_k, format)
    if explain and format == "table":
        out.print(f"Wrote {len(written)} explanation(s) to {folder}")
    failed = [r for r in results if r.error]
    if failed:
        err.print(f"[yellow]{len(failed)} of {len(results)} image(s) could not be read.[/]")
        raise typer.Exit(1)


@command
def export(
    run: RunSource,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx, openvino (IR .xml + .bin), coreml (.mlpackage; runs on macOS), pt2 (torch.export) or "
            "torchscript.",
        ),
    ] = "onnx",
    half: Annotated[bool, typer.Option("--half", help="fp16 (onnx, openvino, coreml).")] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="int8, calibrated on the run's training images (onnx, openvino); int8 weights (coreml)."
        ),
    ] = False,
    min_agreement: Annotated[
        Optional[float],
        typer.Option(
            help="fp16, int8: the least share of evaluation images on which the file must pick PyTorch's top class.",
            show_default="0.99 fp16, 0.95 int8",
        ),
    ] = None,
    calibration: Annotated[
        str,
        typer.Option(
            help="int8: what its activation ranges are calibrated on: the run's training or validation split, or a "
            "folder of images like those the model will see."
        ),
    ] = "training",
    calibration_images: Annotated[
        int, typer.Option(min=1, help="int8: images of that split the activation ranges are calibrated on.")
    ] = 300,
    out_file: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="Output file.", show_default="RUN/export/model[-fp16|-int8].<onnx|xml|mlpackage|pt2|pt>"
        ),
    ] = None,
) -> None:
    """Export the model (with its class names and preprocessing) and check it against PyTorch."""
    from headstart.inference.export import TOLERANCE
    from headstart.inference.export import export as run_export

    if half and int8:
        raise _fail(f"--half and --int8 are two precisions: pass one. Received: --half --int8 --format {format}")
    precision = "fp16" if half else "int8" if int8 else "fp32"
    result = run_export(run, format, out_file, precision, min_agreement, calibration_images, calibration)
    out.print(f"Wrote {result.path} and {result.sidecar}")
    if result.checks is None:
        out.print(
            f"Parity with PyTorch on {result.samples} sample images: max probability difference "
            f"{result.max_difference:.2e} (allowed {TOLERANCE:g})"
        )
        return
    c = result.checks
    if "numeric_check" in c:  # Core ML off macOS: nothing here can run it
        out.print(f"Checked without running it: {', '.join(c['checked'])}.")
        err.print(f"[yellow]Numeric check {c['numeric_check']}.[/]")
        return
    out.print(
        f"{precision} on {c['images']} evaluation images: the same {c.get('agrees_on', 'top class')} as PyTorch on "
        f"{c['agreement']:.1%} (required {c['min_agreement']:.0%})"
        + (f"; accuracy {c['accuracy']:.1%}, PyTorch's {c['pytorch_accuracy']:.1%}" if "accuracy" in c else "")
    )


@command
def serve(
    run: ModelSource,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8000,
    top_k: Annotated[int, typer.Option(min=1, help="Classes returned per image unless a request asks (?top_k=).")] = 3,
    threshold: Threshold = None,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.01, max=1024, help="Largest upload per file, in MB (413 beyond).")
    ] = 10.0,
    max_files: Annotated[int, typer.Option(min=1, max=1000, help="Most images per request (413 beyond).")] = 16,
    max_pixels: Annotated[
        int,
        typer.Option(
            min=1, help=("Most pixels (width x height) per image, read from its header before decoding (413 beyond).")
        ),
    ] = MAX_PIXELS,
    max_request_pixels: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Most pixels per request, all its images together, read from their headers before any is "
                "decoded (413 beyond); at least --max-pixels."
            ),
        ),
    ] = 200_000_000,
    max_decodes: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            show_default="the number of CPUs",
            help=(
                "Full-size images decoded at once, across all requests (each holds ~3 bytes a pixel until "
                "shrunk); the others wait."
            ),
        ),
    ] = None,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            max=3600,
            help=(
                "Seconds a client has to send a request's whole body; a slower upload gets 408 and its "
                "connection is closed."
            ),
        ),
    ] = 30.0,
    keep_alive_timeout: Annotated[
        int, typer.Option(min=1, max=3600, help="Seconds an idle connection is kept open.")
    ] = 5,
    limit_concurrency: Annotated[
        int, typer.Option(min=1, help="Most connections and requests at once (503 beyond).")
    ] = 512,
    device: Device = "auto",
    tta: Annotated[
        bool, typer.Option("--tta", help=TTA_HELP + " Unless a request asks (?tta=false); twice the compute.")
    ] = False,
    engine: EngineOption = "auto",
    engine_precision: EnginePrecision = "fp32",
) -> None:
    """Serve the model over HTTP: POST /predict, GET /healthz, and a page at / to try photos.

    Every request is bounded by the limits below; an error is JSON {"error": ...} (uvicorn's own 503
    beyond --limit-concurrency is plain text).
    """
    from headstart.inference.loading import load
    from headstart.inference.serve import Limits, create_app, uvicorn_options

    limits = Limits(
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout,
        limit_concurrency=limit_concurrency,
        top_k=top_k,
        **({"max_decodes": max_decodes} if max_decodes else {}),
    )  # checked before the model loads
    predictor = load(run, max_pixels=max_pixels, device=device, engine=engine, engine_precision=engine_precision)
    predictor.warm_up()  # converted and checked now, not on the first request
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]Binding to {host}: anyone who can reach this machine can use the model.[/]")
    import uvicorn

    app_ = create_app(predictor, limits, tta=tta, threshold=threshold)
    out.print(f"Serving {run} on http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(app_, host=host, port=port, **uvicorn_options(limits))
