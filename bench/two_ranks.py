"""One process against two ranks (Lightning DDP on the CPU, gloo), run from the CLI as a user would:
time per epoch, peak memory of the largest rank, accuracy, and the number of run folders.

    python bench/two_ranks.py                       # the demo, features and half, 64 px, 4 epochs
    python bench/two_ranks.py --data Food-11/ --input-size 128

Each run gets a fresh image cache, so setup (decoding, the frozen pass) is measured cold. Peak
memory comes from GNU time (``%M``): the largest resident set of the process and the ranks it
started. Compare the columns within one run of this script: timings on a shared machine move.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(data: str, strategy: str, devices: int, size: int, epochs: int, root: Path) -> dict:
    runs = root / f"runs-{strategy}-{devices}"
    cmd = [
        "/usr/bin/time",
        "-f",
        "maxrss_kb=%M",
        sys.executable,
        "-m",
        "headstart",
        "train",
        data,
        "--strategy",
        strategy,
        "--no-augment",
        "--accelerator",
        "cpu",
        "--devices",
        str(devices),
        "--input-size",
        str(size),
        "--epochs",
        str(epochs),
        "--early-stopping",
        "0",
        "--runs-dir",
        str(runs),
        "--name",
        "run",
    ]
    env = {"HEADSTART_CACHE": str(root / f"cache-{strategy}-{devices}"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, **env})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    with (runs / "run" / "history.csv").open() as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    metrics = json.loads((runs / "run" / "metrics.json").read_text())
    return {
        "strategy": strategy,
        "devices": devices,
        "wall_s": wall,
        "epoch_s": sum(seconds[1:]) / max(len(seconds) - 1, 1),
        "setup_s": metrics["setup_seconds"],
        "peak_mb": int(re.findall(r"maxrss_kb=(\d+)", done.stderr)[-1]) / 1024,
        "accuracy": metrics["accuracy"],
        "correct": f"{metrics['correct']}/{metrics['total']}",
        "run_folders": len([p for p in runs.iterdir() if p.is_dir()]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="demo")
    parser.add_argument("--strategies", default="features,half")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies.split(","):
            for devices in (1, 2):
                rows.append(run(args.data, strategy, devices, args.input_size, args.epochs, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| strategy | processes | s/epoch (after the first) | setup s | wall s "
        "| peak RSS, largest rank (MB) | accuracy | run folders |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['devices']} | {r['epoch_s']:.2f} | {r['setup_s']:.1f} | {r['wall_s']:.0f} | "
            f"{r['peak_mb']:,.0f} | {100 * r['accuracy']:.1f} % ({r['correct']}) | {r['run_folders']} |"
        )


if __name__ == "__main__":
    main()
