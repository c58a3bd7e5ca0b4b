"""The benchmarks run: bench/gpu.py in its dry run (tiny, on the CPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"


def test_gpu_bench_dry_run_measures_both_backbones():
    done = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--dry-run"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| (vgg16|efficientnet_lite0) \| ([\d,.]+) \| ([\d,.]+) \| ([\d,.]+) \|$", done.stdout, re.M)
    assert [r[0] for r in rows] == ["vgg16", "efficientnet_lite0"]
    assert all(float(v.replace(",", "")) > 0 for r in rows for v in r[1:])
