"""bench/engines.py's speed mode, quick (timm's tiniest network, 32 px), run in this process."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path

import torch

BENCH = Path(__file__).parent.parent / "bench"


def _engines_bench(capsys, *args: str) -> str:
    """bench/engines.py's main, in this process (its imports are this process's already); what it printed."""
    spec = importlib.util.spec_from_file_location("bench_engines", BENCH / "engines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    module.main(list(args))
    return capsys.readouterr().out


def test_engines_bench_quick_measures_every_engine_here_against_pytorch(tmp_path, capsys):
    from headstart.engines.runtimes import bf16_capable, installed

    cache, threads = os.environ.get("HEADSTART_CACHE"), torch.get_num_threads()
    printed = _engines_bench(capsys, "speed", "--quick", "--out", str(tmp_path / "speed.json"))
    expected = ["torch eager fp32", "torch channels-last fp32"]
    expected += [f"{e} fp32" for e in ("onnxruntime", "openvino") if installed(e)]
    expected += ["openvino bf16"] if installed("openvino") and bf16_capable() else []
    rows = re.findall(r"^\| test_efficientnet \| none \| ([a-z0-9 -]+) \| (.*) \|$", printed, re.M)
    assert [name for name, _ in rows] == expected, printed
    for name, cells in rows:
        ips1, ratio1, ips32, ratio32, error = [c.strip() for c in cells.split("|")][:5]
        assert float(ips1.replace(",", "")) > 0 and float(ips32.replace(",", "")) > 0, (name, cells)
        assert all(math.isfinite(float(r.rstrip("×"))) and float(r.rstrip("×")) > 0 for r in (ratio1, ratio32))
        assert float(error) < 1e-4, (name, error)  # every engine here is fp32
    # bf16 where it cannot pay is said to be unmeasured, not faked.
    assert ("Not measured: openvino bf16" in printed) == (installed("openvino") and not bf16_capable())
    # The same figures in the JSON, from a cold conversion cache; the process's settings left as they were.
    result = json.loads((tmp_path / "speed.json").read_text())
    assert [r["engine"] for r in result["rows"]] == expected
    assert all(r["export_s"] > 0 for r in result["rows"] if not r["engine"].startswith("torch"))
    assert (os.environ.get("HEADSTART_CACHE"), torch.get_num_threads()) == (cache, threads)
