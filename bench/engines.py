"""Inference engines on a CPU: how fast each runs headstart's frozen pass, how far its output is from
PyTorch's, and what ``--engine`` changes for a whole run.

    python bench/engines.py speed                                  # every curated backbone, 224 px, 1 thread
    python bench/engines.py speed --backbones efficientnet_lite0 --threads 2 --repeats 5
    python bench/engines.py accuracy --data demo,~/data/flowers-bench   # headstart.fit, once per engine
    python bench/engines.py end-to-end --data demo                 # headstart train / advise: torch vs auto
    python bench/engines.py speed --quick                          # tiny, in seconds (the test suite runs it)

- **speed**: images a second of ``features_module()`` (the frozen pass of ``features``) at batch 1 and
  32, in PyTorch eager fp32 (the reference), PyTorch channels-last, ONNX Runtime fp32, OpenVINO fp32,
  and OpenVINO bf16 where the CPU has bf16 units (else listed as not measured). The engines are built
  as headstart builds them (``onnx_files.converted``, then ``runtimes.*_run``), from an empty cache:
  the one-time ONNX export is timed, and so is each runtime's loading. The engines are timed in turn
  (round-robin), each repetition passing the same ``--images`` real photos (skimage's chelsea, coffee,
  astronaut, rocket), the best repetition counting: a change of load falls on every engine alike, so
  compare ratios, not images a second across runs. Error: the largest difference from PyTorch eager
  fp32 on the four photos, relative to its largest output. Backbones without offline weights run
  with random weights: right for speed and error, meaningless for accuracy.
- **accuracy**: ``headstart.fit(DATA, strategy="features", engine=E)`` for torch, onnxruntime and
  openvino, each from an empty HEADSTART_CACHE (decoding, export and frozen pass all paid): the
  evaluation accuracy, the wall time, and what ``metrics.json`` says ran the frozen pass.
- **end-to-end**: ``headstart train DATA --strategy features`` and ``headstart advise DATA`` as
  commands, with ``--engine torch`` and ``--engine auto``, each from an empty cache: wall seconds
  (process start included), and the accuracy or the advice.

Results: a markdown table, and JSON in ``--out`` (default ``bench-engines/<mode>.json``).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # skimage.data's colour photos, bundled with it
QUICK = dict(backbone="test_efficientnet", weights="none", input_size=32)  # timm's tiniest network, random
HEADSTART = Path(sys.executable).with_name("headstart")  # the command of this environment


@contextmanager
def fresh_cache():
    """An empty HEADSTART_CACHE for the block: no decoded image, frozen output or converted network reused."""
    with (
        tempfile.TemporaryDirectory(prefix="headstart-cache-") as tmp,
        mock.patch.dict(os.environ, HEADSTART_CACHE=tmp),
    ):
        yield Path(tmp)


def machine() -> dict:
    """The CPU, its cores and the engines' versions; OpenVINO's CPU capabilities say whether bf16 pays."""
    from headstart.engines.runtimes import installed

    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    about = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}
    for name in [e for e in ("onnxruntime", "openvino") if installed(e)]:
        about[name] = importlib.import_module(name).__version__.split("-")[0]
    if installed("openvino"):
        about["openvino_cpu_capabilities"] = (
            importlib.import_module("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        )
    return about


def photos(size: int, n: int) -> torch.Tensor:
    """``n`` real photos (``PHOTOS``, cycled) as the frozen pass takes them: float RGB in [0, 1], NCHW."""
    from skimage import data

    images = []
    for name in PHOTOS:
        x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
        images.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)[0].clamp(0, 1))
    return torch.stack(images)[torch.arange(n) % len(images)].contiguous()


def _failure(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def build_engines(model, module, example: torch.Tensor) -> tuple[list[dict], float | None]:
    """Every engine this machine has for ``module``, built as headstart builds them; the export's seconds."""
    from headstart.engines.choice import on_tensors
    from headstart.engines.onnx_files import converted, fingerprint
    from headstart.engines.runtimes import bf16_capable, installed, onnxruntime_run, openvino_run

    nhwc = copy.deepcopy(module).to(memory_format=torch.channels_last)
    engines = [
        {"engine": "torch eager fp32", "run": module},
        {"engine": "torch channels-last fp32", "run": lambda x: nhwc(x.to(memory_format=torch.channels_last))},
    ]
    wanted = [("onnxruntime", "fp32", onnxruntime_run), ("openvino", "fp32", openvino_run)]
    wanted += [("openvino", "bf16", openvino_run)] if bf16_capable() else []  # bf16 only where it pays
    wanted = [w for w in wanted if installed(w[0])]
    started = time.perf_counter()
    try:
        path = converted(module, example, fingerprint(module, repr(model.preprocessing)))
        export_s = time.perf_counter() - started
    except Exception as e:  # an export that fails is a finding: reported, PyTorch still measured
        return engines + [{"engine": f"{n} {p}", "error": _failure(e)} for n, p, _ in wanted], None
    for name, precision, make in wanted:
        started = time.perf_counter()
        try:
            run = on_tensors(make(path, precision, torch.get_num_threads()))  # as training runs it
            engines.append({"engine": f"{name} {precision}", "run": run})
            engines[-1]["load_s"] = time.perf_counter() - started
        except Exception as e:
            engines[-1:] = [{"engine": f"{name} {precision}", "error": _failure(e)}]
    return engines, export_s


def speed_one(backbone: str, weights: str, size: int, batches: list[int], images: int, repeats: int) -> list[dict]:
    """One backbone: every engine's images a second at each batch size (round-robin, best of
    ``repeats``), its error against PyTorch eager fp32, the export's and the loading's seconds."""
    from headstart import create_model
    from headstart.engines.choice import relative_error

    model = create_model(backbone, 2, weights=weights, input_size=size).eval()
    module = model.features_module().eval()
    x, four = photos(size, max(images, *batches)), slice(0, len(PHOTOS))
    with torch.inference_mode(), fresh_cache():
        engines, export_s = build_engines(model, module, x[four])
        reference = module(x[four])
        for e in [e for e in engines if "run" in e]:
            try:
                e["rel_error"] = relative_error(e["run"](x[four]), reference)
                for b in batches:  # warm-up: OpenVINO and ONNX Runtime prepare each new shape on first use
                    e["run"](x[:b])
            except Exception as err:
                e["error"] = _failure(err)
        live = [e for e in engines if "error" not in e]
        best = {(e["engine"], b): math.inf for e in live for b in batches}
        for _ in range(repeats):
            for b in batches:
                chunks = [x[i : min(i + b, images)] for i in range(0, images, b)]
                for e in live:  # in turn: a change of load falls on every engine alike
                    started = time.perf_counter()
                    for c in chunks:
                        e["run"](c)
                    best[e["engine"], b] = min(best[e["engine"], b], time.perf_counter() - started)
    rows = []
    for e in engines:
        row = dict(backbone=backbone, weights=weights, input_size=size, engine=e["engine"], error=e.get("error"))
        if not row["error"]:
            converted = not e["engine"].startswith("torch")
            row.update(rel_error=e["rel_error"], export_s=round(export_s, 2) if converted else None)
            row["load_s"] = round(e["load_s"], 2) if converted else None
            for b in batches:
                row[f"batch{b}_ips"] = round(images / best[e["engine"], b], 2)
                row[f"batch{b}_ratio"] = round(best["torch eager fp32", b] / best[e["engine"], b], 3)
        rows.append(row)
    return rows


def speed(args) -> dict:
    from headstart import list_backbones
    from headstart.engines.runtimes import bf16_capable

    curated = {b["name"]: b for b in list_backbones()}
    names = args.backbones.split(",") if args.backbones else ([QUICK["backbone"]] if args.quick else list(curated))
    size = QUICK["input_size"] if args.quick else args.input_size
    batches = [int(b) for b in args.batch_sizes.split(",")]
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # ONNX Runtime and OpenVINO take PyTorch's thread count, as in headstart
    try:
        rows = []
        for name in names:
            offline = curated.get(name, {}).get("weights") == "bundled (offline)"
            rows += speed_one(name, "default" if offline else "none", size, batches, args.images, args.repeats)
            print(f"{name}: measured", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)
    about = machine()
    capabilities = ", ".join(about.get("openvino_cpu_capabilities", []))
    not_measured = [] if bf16_capable() else [f"openvino bf16: no bf16 units here (OpenVINO's CPU: {capabilities})"]
    settings = dict(threads=args.threads, input_size=size, batches=batches, images=args.images, repeats=args.repeats)
    return {"mode": "speed", "machine": about, "settings": settings, "rows": rows, "not_measured": not_measured}


def speed_table(result: dict) -> str:
    batches = result["settings"]["batches"]
    lines = [
        "| backbone | weights | engine | "
        + " | ".join(f"batch {b} img/s | × eager" for b in batches)
        + " | max rel. error | ONNX export s (once) | load s |",
        "|---|---|---|" + "---:|" * (2 * len(batches) + 3),
    ]
    for r in result["rows"]:
        start = f"| {r['backbone']} | {r['weights']} | {r['engine']} |"
        if r["error"]:
            lines.append(f"{start} failed: {r['error']} |")
            continue
        cells = " | ".join(f"{r[f'batch{b}_ips']:,.1f} | {r[f'batch{b}_ratio']:.2f}×" for b in batches)
        export, load = ("" if r[k] is None else f"{r[k]:.2f}" for k in ("export_s", "load_s"))
        lines.append(f"{start} {cells} | {r['rel_error']:.1e} | {export} | {load} |")
    return "\n".join(lines + [f"\nNot measured: {n}." for n in result["not_measured"]])


def options(args) -> dict:
    return dict(QUICK, epochs=1) if args.quick else {"input_size": args.input_size}


def accuracy(args) -> dict:
    """``headstart.fit`` once per engine and data set, each from an empty cache."""
    from headstart import fit

    rows = []
    with tempfile.TemporaryDirectory() as runs, fresh_cache():  # the process's one-time costs, not timed
        fit("demo", strategy="features", epochs=1, input_size=32, engine="torch", runs_dir=runs, name="warm-up")
    for data in args.data.split(","):
        for engine in ("torch", "onnxruntime", "openvino"):
            with tempfile.TemporaryDirectory() as runs, fresh_cache():
                started = time.perf_counter()
                m = fit(data, strategy="features", engine=engine, runs_dir=runs, name=engine, **options(args)).metrics
                row = dict(data=data, engine=engine, seconds=round(time.perf_counter() - started, 1))
                row.update({k: m.get(k) for k in ("accuracy", "correct", "total", "setup_seconds", "frozen_pass")})
            rows.append(row)
            print(f"{data} {engine}: {row['accuracy']:.4f} in {row['seconds']} s", file=sys.stderr, flush=True)
    return {"mode": "accuracy", "machine": machine(), "settings": options(args), "rows": rows}


def end_to_end(args) -> dict:
    """``headstart train`` and ``headstart advise`` as commands, --engine torch and auto, each from an empty cache."""
    flags = [x for k, v in options(args).items() if k != "epochs" for x in (f"--{k.replace('_', '-')}", str(v))]
    train = ["--strategy", "features", *(["--epochs", "1"] if args.quick else [])]
    rows = []
    for data in args.data.split(","):
        for command in ("train", "advise"):
            for engine in ("torch", "auto"):
                with tempfile.TemporaryDirectory() as runs, fresh_cache():
                    argv = [str(HEADSTART), command, data, "--engine", engine, *flags]
                    argv += [*train, "--runs-dir", runs, "--name", "run"] if command == "train" else ["--json"]
                    started = time.perf_counter()
                    done = subprocess.run(argv, capture_output=True, text=True)
                    row = dict(data=data, command=command, engine=engine, seconds=time.perf_counter() - started)
                    if done.returncode != 0:
                        row["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                    elif command == "train":
                        m = json.loads((Path(runs) / "run" / "metrics.json").read_text())
                        row.update(accuracy=m["accuracy"], frozen_pass=m.get("frozen_pass"))
                    else:
                        advice = json.loads(done.stdout)
                        m = advice["measurements"]
                        row.update(advice=f"{advice['case']}, k-NN {m['final_knn']:.1%}", frozen_pass=m.get("engine"))
                rows.append(row)
                print(f"{data} {command} --engine {engine}: {row['seconds']:.1f} s", file=sys.stderr, flush=True)
    return {"mode": "end-to-end", "machine": machine(), "settings": options(args), "rows": rows}


def runs_table(result: dict) -> str:
    lines = [
        "| data | what | engine | wall s | eval accuracy / advice | frozen pass ran in |",
        "|---|---|---|---:|---|---|",
    ]
    for r in result["rows"]:
        outcome = f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else r.get("advice", "")
        ran = r.get("error") or " ".join(f"{k}={v}" for k, v in (r.get("frozen_pass") or {}).items())
        lines.append(
            f"| {r['data']} | {r.get('command', 'fit')} | {r['engine']} | {r['seconds']:.1f} | {outcome} | {ran} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["speed", "accuracy", "end-to-end"])
    parser.add_argument("--backbones", help="speed: comma-separated backbones. Default: every curated one.")
    parser.add_argument("--input-size", type=int, default=224, help="Pixels. Default: 224.")
    parser.add_argument("--batch-sizes", default="1,32", help="speed: comma-separated. Default: 1,32.")
    parser.add_argument("--images", type=int, default=32, help="speed: images a timed repetition passes. Default: 32.")
    parser.add_argument("--repeats", type=int, default=3, help="speed: repetitions; the best counts. Default: 3.")
    parser.add_argument("--threads", type=int, default=1, help="speed: CPU threads of every engine. Default: 1.")
    parser.add_argument("--data", default="demo", help="accuracy, end-to-end: comma-separated. Default: demo.")
    parser.add_argument("--quick", action="store_true", help="test_efficientnet, random, 32 px, 1 epoch, 2 repeats.")
    parser.add_argument("--out", help="The JSON file. Default: bench-engines/<mode>.json.")
    args = parser.parse_args(argv)
    args.repeats = min(args.repeats, 2) if args.quick else args.repeats
    result = {"speed": speed, "accuracy": accuracy, "end-to-end": end_to_end}[args.mode](args)
    (out := Path(args.out or f"bench-engines/{args.mode}.json")).parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(", ".join(f"{k}: {v}" for k, v in result["machine"].items()) + "\n")
    print(speed_table(result) if args.mode == "speed" else runs_table(result))
    return result


if __name__ == "__main__":
    main()
