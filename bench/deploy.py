"""Exported files against PyTorch: size, batch-1 latency, batch-32 throughput, agreement and accuracy.

    python bench/deploy.py RUN [--formats onnx:fp32,onnx:int8,...] [--repeats 50]
    python bench/deploy.py RUN --quick            # 3 repeats: checks the script runs (the tests)

Each format:precision is exported with ``headstart.export`` (checked as it always is, on up to 300 evaluation
images), then run on up to ``--evaluation-images`` images of the run's evaluation split for its agreement
with PyTorch and its accuracy, and timed in this process beside PyTorch
eager fp32, in interleaved blocks: every round runs each engine ``BLOCK`` times in a row on the same prepared
image, so slow drifts of a shared machine touch every engine alike, while no engine is timed just after
another (one call each, alternating, slowed PyTorch eager 2.3× and ONNX Runtime 1.7× here: each runtime's
threads and caches are cold after the other's). Batch-1 latency is the median over ``--repeats`` calls;
batch-32 throughput the best of a few. Threads: PyTorch's (``torch.get_num_threads()``) for every engine.
Core ML runs only on macOS: elsewhere its rows have the file's size alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

BLOCK = 10  # batch-1 calls of one engine in a row
DEFAULT = "onnx:fp32,onnx:fp16,onnx:int8,openvino:fp32,openvino:fp16,openvino:int8,coreml:fp16,coreml:int8"


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch

    from headstart.inference.coreml import RUNS_HERE
    from headstart.inference.export import FORMATS, export, runner, split_images
    from headstart.inference.predict import load
    from headstart.inference.prediction import as_batch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="A run folder.")
    parser.add_argument("--formats", default=DEFAULT, help=f"Comma-separated format:precision. Default: {DEFAULT}.")
    parser.add_argument("--repeats", type=int, default=50, help="Batch-1 rounds (the median is kept). Default: 50.")
    parser.add_argument("--out", help="Folder for the exported files (default: RUN/export).")
    parser.add_argument(
        "--evaluation-images", type=int, default=1000, help="Images agreement and accuracy are measured on."
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds: checks the script runs (the tests).")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats

    predictor = load(args.run, device="cpu")
    images = split_images(predictor, "evaluation", 32)[0]
    one, many = as_batch(images[:1]), as_batch((images * 32)[:32])
    model = predictor.model.eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).softmax(1).numpy()

    engines, sizes_only = {"pytorch eager:fp32": (eager, None)}, {}
    for spec in args.formats.split(","):
        fmt, precision = spec.split(":")
        ext = FORMATS[fmt]
        out = Path(args.out) / f"model-{precision}{ext}" if args.out else None
        result = export(predictor, fmt, out, precision)
        files = [result.path] if result.path.is_file() else [f for f in result.path.rglob("*") if f.is_file()]
        files += [result.path.with_suffix(".bin")] if fmt == "openvino" else []
        info = {"size": sum(f.stat().st_size for f in files), "checks": result.checks}
        if fmt == "coreml" and not RUNS_HERE:
            sizes_only[spec] = info
        else:
            engines[spec] = (runner(result.path, fmt), info)

    latency = {name: [] for name in engines}
    for _ in range(max(1, repeats // BLOCK)):  # interleaved blocks: each round runs every engine BLOCK times
        for name, (run, _) in engines.items():
            run(one)  # its threads and caches warm again after the engine before it
            for _ in range(min(BLOCK, repeats)):
                start = time.perf_counter()
                run(one)
                latency[name].append(time.perf_counter() - start)
    throughput = {}
    for name, (run, _) in engines.items():
        run(many)
        throughput[name] = max(32 / _timed(run, many) for _ in range(2 if args.quick else 5))

    graded, labels = split_images(predictor, "evaluation", 32 if args.quick else args.evaluation_images)
    y = np.asarray(labels)
    top = {name: _batched(run, as_batch, graded).argmax(1) for name, (run, _) in engines.items()}
    base_latency = statistics.median(latency["pytorch eager:fp32"])
    print(f"{len(graded)} evaluation images of {args.run}; {torch.get_num_threads()} threads\n")
    print(
        "| engine:precision | file MB | batch-1 ms (median) | × eager | batch-32 images/s | × eager | agreement "
        "| accuracy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (_, info) in engines.items():
        ms = 1000 * statistics.median(latency[name])
        size = f"{info['size'] / 2**20:.1f}" if info else ""
        agreement = f"{(top[name] == top['pytorch eager:fp32']).mean():.1%}"
        accuracy = f"{(top[name] == y).mean():.1%}"
        print(
            f"| {name} | {size} | {ms:.1f} | {1000 * base_latency / ms:.2f}× | {throughput[name]:.0f} "
            f"| {throughput[name] / throughput['pytorch eager:fp32']:.2f}× | {agreement} | {accuracy} |"
        )
    for name, info in sizes_only.items():
        print(f"| {name} | {info['size'] / 2**20:.1f} | not run: Core ML runs on macOS only | | | | | |")


def _batched(run, as_batch, images, size: int = 32):
    import numpy as np

    return np.concatenate([run(as_batch(images[i : i + size])) for i in range(0, len(images), size)])


def _timed(run, x) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
