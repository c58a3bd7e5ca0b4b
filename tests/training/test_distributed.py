"""Two processes on the CPU (gloo), started by Lightning from the CLI as on a machine with two GPUs:
one run folder written by rank 0, the frozen pass once in total, the figures of one process."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from headstart.data.dataset import load_dataset
from headstart.training.fit import fit
from helpers.ports import free_port_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT")


# No dropout: then two ranks compute what one process computes, up to the order of float sums.
NO_DROPOUT = "head_dropout: 0.0\n"
# A logistic regression by L-BFGS: every rank steps on the whole split, its line search the same on every rank.
LBFGS = NO_DROPOUT + "optimizer: lbfgs\nlr: 1.0\nhead_hidden: 0\nweight_decay: 0.001\n"


def _command(
    tiny: Path, runs: Path, name: str, devices: int, *extra: str, batch: int = 8, config_text: str = NO_DROPOUT
) -> list[str]:
    config = runs / "nodropout.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(config_text)
    return [
        sys.executable,
        "-m",
        "headstart",
        "--verbose",
        "train",
        str(tiny),
        "--config",
        str(config),
        "--accelerator",
        "cpu",
        "--devices",
        str(devices),
        "--input-size",
        "32",
        "--batch-size",
        str(batch),
        "--runs-dir",
        str(runs),
        "--name",
        name,
        *extra,
    ]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=free_port_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]


# features with batches of 7 (24 images: 7, 7, 7, 3): shares of 4 and 3, 2 and 1, weighed by their size.
@pytest.mark.parametrize(
    "strategy, batch, config", [("features", 7, NO_DROPOUT), ("half", 8, NO_DROPOUT), ("features", 7, LBFGS)]
)
def test_two_ranks_train_as_one_process_does(tiny, tmp_path: Path, strategy: str, batch: int, config: str, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # every split's frozen pass computed here
    extra = ["--strategy", strategy, "--epochs", "3", "--no-augment"]
    two = _run(_command(tiny, tmp_path / "runs", "two", 2, *extra, batch=batch, config_text=config))
    # The reference in this process, with the options the command line gave the two ranks.
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "nodropout.yaml").write_text(config)
    fit(
        tiny,
        config_file=tmp_path / "single" / "nodropout.yaml",
        accelerator="cpu",
        devices="1",
        input_size=32,
        batch_size=batch,
        strategy=strategy,
        epochs=3,
        augment=False,
        runs_dir=tmp_path / "single",
        name="one",
    )
    # One run folder; every file written by one rank, once (history.csv: once an epoch).
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == ["two"]
    runs = str(tmp_path / "runs")  # the cache's files (frozen outputs kept for later runs) are not the run's
    written = Counter(Path(p).name for p in re.findall(r"wrote (\S+)", two.stderr) if p.startswith(runs))
    assert written == {
        "config.yaml": 1,
        "data.json": 1,
        "history.csv": 3,
        "metrics.json": 1,
        "confusion_matrix.csv": 1,
        "confusion_matrix.png": 1,
        "curves.png": 1,
        "report.html": 1,
        **({"misclassified.png": 1} if "misclassified.png" in written else {}),
        **({"head_search.csv": 1} if strategy == "features" and config != LBFGS else {}),  # heads tried first
    }, written
    assert two.stdout.count("Number of correctly identified images") == 1  # rank 0 reports
    # The frozen pass once in total: each rank computed its share of every split.
    shares = re.findall(r"frozen pass, (\w+): rank (\d) of 2 computed (\d+) of (\d+) images", two.stderr)
    per_split = {}
    for split, rank, k, n in shares:
        per_split.setdefault(split, {})[int(rank)] = (int(k), int(n))
    assert set(per_split) == {"training", "validation", "evaluation"}
    for split, ranks in per_split.items():
        assert set(ranks) == {0, 1} and sum(k for k, _ in ranks.values()) == ranks[0][1], (split, ranks)
    # The same figures as one process with the same global batch: each step's two half-batches
    # average to the whole batch's gradient; only the order of float sums differs (1e-5 is far
    # below what a wrong sample, batch or reduction changes: ~1e-2 on these losses).
    a, b = _history(tmp_path / "runs" / "two"), _history(tmp_path / "single" / "one")
    for x, y in zip(a, b):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert x[key] == pytest.approx(y[key], abs=1e-5), (key, x, y)
    m2, m1 = (
        json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "runs" / "two", tmp_path / "single" / "one")
    )
    assert (m2["correct"], m2["total"], m2["best_epoch"]) == (m1["correct"], m1["total"], m1["best_epoch"])
    assert m2["loss"] == pytest.approx(m1["loss"], abs=1e-5)


def test_an_interrupted_two_rank_run_resumes(tiny, tmp_path: Path):
    runs = tmp_path / "runs"
    command = _command(tiny, runs, "r", 2, "--strategy", "features", "--epochs", "12", "--early-stopping", "0")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=free_port_env()
    )  # its own process group: Ctrl-C reaches every rank
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (runs / "r" / "history.csv").is_file() and len(_history(runs / "r")) >= 3:
            os.killpg(process.pid, signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert " ".join(err.split()).count("Resume with: headstart train --resume") == 1  # said once, by rank 0
    before = _history(runs / "r")
    assert 3 <= len(before) < 12 and (runs / "r" / "checkpoints" / "last.ckpt").is_file()
    assert not (runs / "r" / "metrics.json").exists()
    resumed = _run([sys.executable, "-m", "headstart", "train", "--resume", str(runs / "r")])
    after = _history(runs / "r")
    assert [int(r["epoch"]) for r in after] == list(range(1, 13))
    timing = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert timing(after[: len(before)]) == timing(before)  # the epochs before the interruption, as they were
    assert json.loads((runs / "r" / "metrics.json").read_text())["epochs"] == 12
    assert resumed.stdout.count("Number of correctly identified images") == 1


def test_devices_and_accelerators_are_checked():
    import torch

    from headstart.errors import ConfigError
    from headstart.training.distributed import parse_devices
    from headstart.utils.devices import device

    assert device("cpu") == torch.device("cpu")
    assert device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU that PyTorch can use"):
            device("gpu")
    with pytest.raises(ConfigError, match="Unknown device 'tpu'"):
        device("tpu")
    assert (parse_devices("auto"), parse_devices("2"), parse_devices("0,1")) == ("auto", 2, [0, 1])
    with pytest.raises(ConfigError, match="--devices must be auto, a count or a list"):
        parse_devices("two")


def test_global_batches_are_shared_among_ranks():
    from headstart.data.samplers import EpochSampler, RankBatches

    data = list(range(10))
    one = list(RankBatches(EpochSampler(data, seed=0), 4, 0, 1))
    two = [list(RankBatches(EpochSampler(data, seed=0), 4, r, 2)) for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) == 3  # the same steps
    for whole, a, b in zip(one, *two):
        assert sorted(a + b) == sorted(whole) and not set(a) & set(b)  # each step: the same samples, shared
    three = [list(RankBatches(EpochSampler(data, seed=0), 4, r, 3)) for r in range(3)]
    assert all(len(batches[-1]) >= 1 for batches in three)  # a last batch of 2 still gives every rank a sample


def test_more_cpu_processes_than_cores_is_refused_before_anything_is_written(tiny, tmp_path: Path):
    from typer.testing import CliRunner

    from headstart.cli.main import app

    cores = len(os.sched_getaffinity(0))
    result = CliRunner().invoke(
        app,
        ["train", str(tiny), "--accelerator", "cpu", "--devices", str(cores + 1), "--runs-dir", str(tmp_path / "runs")],
    )
    assert result.exit_code == 2 and f"this machine has {cores} CPU core(s)" in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()
    for devices in ("0,1", "-2"):
        result = CliRunner().invoke(
            app, ["train", str(tiny), "--devices", devices, "--runs-dir", str(tmp_path / "runs")]
        )
        assert result.exit_code == 2 and "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_two_ranks_train_multi_label_data_as_one_process_does(multi_run, tmp_path: Path, monkeypatch):
    """Validation mAP and the thresholds come from every rank's validation images (shares of unequal size)."""
    manifest = multi_run[1]
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    extra = ["--strategy", "features", "--epochs", "3"]
    # 41 training images in batches of 7 (the last 6: every rank has a share), 7 validation images (4 and 3)
    config = NO_DROPOUT + "val_fraction: 0.15\n"
    _run(_command(manifest, tmp_path / "runs", "two", 2, *extra, batch=7, config_text=config))
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "nodropout.yaml").write_text(config)
    fit(
        manifest,
        config_file=tmp_path / "single" / "nodropout.yaml",
        accelerator="cpu",
        devices="1",
        input_size=32,
        batch_size=7,
        strategy="features",
        epochs=3,
        runs_dir=tmp_path / "single",
        name="one",
    )
    a, b = _history(tmp_path / "runs" / "two"), _history(tmp_path / "single" / "one")
    assert len(a) == len(b) == 3
    counts = json.loads((tmp_path / "runs" / "two" / "data.json").read_text())["counts"]
    assert counts["validation"] and len(load_dataset(manifest, val_fraction=0.15).split("validation")) == 7
    for x, y in zip(a, b):
        for key in ("loss", "val_loss", "val_accuracy", "val_macro_f1", "val_map"):
            assert x[key] == pytest.approx(y[key], abs=1e-5), (key, x, y)
    m2, m1 = (
        json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "runs" / "two", tmp_path / "single" / "one")
    )
    assert m2["thresholds"] == pytest.approx(m1["thresholds"], abs=1e-5)
    assert (m2["map"], m2["correct"]) == (pytest.approx(m1["map"], abs=1e-5), m1["correct"])
