"""The run folder: what a finished run holds, reading it back, and loading its model safely."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.errors import RunError
from headstart.inference.predict import load
from headstart.runs.checkpoints import load_checkpoint, load_model
from headstart.runs.folder import Run, data_fingerprint
from headstart.runs.layout import HISTORY_COLUMNS


def test_a_finished_run_holds_what_the_readme_says(tiny_run):
    files = {p.relative_to(tiny_run.dir).as_posix() for p in tiny_run.dir.rglob("*") if p.is_file()}
    expected = {
        "config.yaml",
        "data.json",
        "history.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.json",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "curves.png",
        "report.html",
        "head_search.csv",  # features: the heads tried before training
        ".lock",
    }  # held while a process trains it
    if tiny_run.metrics["correct"] < tiny_run.metrics["total"]:
        expected.add("misclassified.png")  # the gallery of wrong predictions, when there are any
    assert files == expected
    with tiny_run.history_file.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and list(rows[0]) == HISTORY_COLUMNS
    config = yaml.safe_load((tiny_run.dir / "config.yaml").read_text())
    assert config["strategy"] == "features" and config["input_size"] == 32 and config["recipe"] == "default"
    data = json.loads(tiny_run.data_file.read_text())
    assert data["layout"] == "food11" and data["counts"]["training"] == [8, 8, 8]
    assert data["classes"] == ["Bread", "Dairy product", "Dessert"]  # Food-11's names for ids 0-2


def test_load_reads_back_what_fit_returned(tiny_run):
    again = Run.load(tiny_run.dir)
    assert again.config == tiny_run.config
    assert again.metrics == json.loads(tiny_run.metrics_file().read_text()) == tiny_run.metrics
    assert [r["val_loss"] for r in again.history] == pytest.approx([r["val_loss"] for r in tiny_run.history], rel=1e-6)


def test_the_checkpoint_carries_what_it_takes_to_use_the_model(tiny_run):
    model, meta = load_checkpoint(tiny_run.best_checkpoint)
    assert meta["classes"] == Run.load(tiny_run.dir).data_info()["classes"]
    assert meta["preprocessing"]["input_size"] == 32 and meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert model.preprocessing.input_size == 32 and not model.training
    for source in (tiny_run.dir, tiny_run.best_checkpoint):  # a run folder or its checkpoint: the same model
        same, _, run_dir = load_model(source)
        assert run_dir == tiny_run.dir
        assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['EXPLOIT_TARGET'])}",))


def _poisoned_copy(run_dir: Path, dst: Path) -> Path:
    """A copy of a run whose checkpoints, once unpickled, would run ``touch $EXPLOIT_TARGET``."""
    copy = shutil.copytree(run_dir, dst)
    for ckpt_file in (copy / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(ckpt_file, weights_only=True)
        ckpt["headstart"]["payload"] = _Exploit()
        torch.save(ckpt, ckpt_file)
    return copy


def test_a_checkpoint_that_would_run_code_is_refused(tiny_run, tmp_path: Path, monkeypatch):
    target = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_TARGET", str(target))
    evil = _poisoned_copy(tiny_run.dir, tmp_path / "evil")
    with pytest.raises(RunError, match="Refused to load .*best.ckpt: it holds Python objects besides tensors"):
        load(evil / "checkpoints" / "best.ckpt")
    assert not target.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "{run}", "{image}"],
        ["evaluate", "{run}"],
        ["export", "{run}"],
        ["serve", "{run}"],
        ["train", "--resume", "{run}"],
    ],
)
def test_no_command_runs_the_code_in_a_checkpoint(tiny_run, tiny, tmp_path: Path, monkeypatch, command):
    target = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_TARGET", str(target))
    evil = _poisoned_copy(tiny_run.dir, tmp_path / "evil")
    before = sorted(p.relative_to(evil) for p in evil.rglob("*"))
    image = next((tiny / "evaluation").iterdir())
    result = CliRunner().invoke(app, [a.format(run=evil, image=image) for a in command])
    assert result.exit_code == 2, result.output
    assert "could run code" in result.output and "Traceback" not in result.output
    assert not target.exists()
    assert sorted(p.relative_to(evil) for p in evil.rglob("*")) == before  # nothing written either


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_exit_2_naming_the_file(tiny_run, tmp_path: Path, damage: str):
    run = shutil.copytree(tiny_run.dir, tmp_path / "run")
    for name in ("best", "last"):
        f = run / "checkpoints" / f"{name}.ckpt"
        data = f.read_bytes()
        f.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    for command, named in (
        (["evaluate", str(run)], "best.ckpt"),
        (["train", "--resume", str(run)], "last.ckpt"),
        (["predict", str(run), str(run / "curves.png")], "best.ckpt"),
    ):
        result = CliRunner().invoke(app, command)
        said = " ".join(result.output.split())
        assert result.exit_code == 2, (command, result.output)
        assert "is damaged or not a checkpoint" in said and "Traceback" not in said
        assert f"checkpoints/{named}isdamaged" in "".join(said.split())  # the file named, however the lines wrap


def test_not_a_run_and_an_unfinished_run_are_run_errors(tiny_run, tmp_path: Path):
    with pytest.raises(RunError, match="is not a headstart run"):
        Run.load(tmp_path)
    with pytest.raises(RunError, match="it is not a headstart run"):
        load(tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((tiny_run.dir / "config.yaml").read_text())
    with pytest.raises(RunError, match=f"did not finish. Resume it with headstart train --resume {unfinished}"):
        load(unfinished)


def test_create_names_a_new_folder_and_refuses_an_existing_name(tiny_run, tmp_path: Path):
    import dataclasses

    cfg = dataclasses.replace(tiny_run.config, runs_dir=str(tmp_path), name=None)
    first = Run.create(cfg)
    first.dir.mkdir(parents=True)
    second = Run.create(cfg)
    assert second.dir != first.dir and second.dir.name.startswith("efficientnet_lite0-features-")
    with pytest.raises(RunError, match="already exists. Pick another --name"):
        Run.create(dataclasses.replace(cfg, name=first.dir.name))


def test_fingerprint_changes_with_the_files(tiny, tmp_path: Path):
    import shutil

    from headstart.data.dataset import load_dataset

    copy = shutil.copytree(tiny, tmp_path / "copy")
    before = data_fingerprint(load_dataset(copy))
    assert data_fingerprint(load_dataset(copy)) == before
    target = next((copy / "training").iterdir())
    os.utime(target, ns=(1, 1))
    assert data_fingerprint(load_dataset(copy)) != before


def test_a_damaged_run_folder_is_a_clear_error_with_exit_2(tiny_run, tmp_path: Path):
    import shutil

    from typer.testing import CliRunner

    from headstart.cli.main import app
    from headstart.errors import ConfigError

    damaged = shutil.copytree(tiny_run.dir, tmp_path / "damaged")
    (damaged / "metrics.json").write_text("{not json")
    with pytest.raises(RunError, match="Cannot read .*metrics.json"):
        Run.load(damaged)
    result = CliRunner().invoke(app, ["evaluate", str(damaged)])
    assert result.exit_code == 2 and "Cannot read" in result.output and "Traceback" not in result.output
    (damaged / "metrics.json").unlink()
    with (damaged / "config.yaml").open("a") as f:
        f.write("colour: blue\n")
    with pytest.raises(ConfigError, match="unknown option\\(s\\): colour"):
        Run.load(damaged)
    assert load(damaged).classes == load(tiny_run.dir).classes  # predicting needs only the checkpoint


def test_ctrl_c_outside_training_exits_130(tiny_run, monkeypatch):
    from typer.testing import CliRunner

    from headstart.cli.main import app
    from headstart.evaluation import evaluate as evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    result = CliRunner().invoke(app, ["evaluate", str(tiny_run.dir)])
    assert result.exit_code == 130 and "Interrupted." in result.output


def test_run_files_are_as_readable_as_the_umask_allows(tiny, tmp_path: Path):
    import stat

    from headstart.training.fit import fit
    from helpers.datasets import TINY_OPTIONS

    old = os.umask(0o022)
    try:
        run = fit(tiny, strategy="features", epochs=1, runs_dir=tmp_path, name="modes", **TINY_OPTIONS)
    finally:
        os.umask(old)
    modes = {
        p.relative_to(run.dir).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run.dir.rglob("*") if p.is_file()
    }
    assert modes and set(modes.values()) == {0o644}, modes


def test_an_empty_checkpoint_is_called_empty(tmp_path: Path):
    from typer.testing import CliRunner

    from headstart.cli.main import app

    (tmp_path / "empty.ckpt").write_bytes(b"")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "empty.ckpt"), str(tmp_path)])
    assert result.exit_code == 2 and "the file is empty: 0 bytes" in result.output and "mmap" not in result.output
