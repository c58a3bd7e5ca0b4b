"""Datasets: load_dataset, the splits drawn when the data has none, check_splits, and Dataset.

The refusals are listed in DATA_ERRORS, as in test_layouts.py: checked here on ``load_dataset``,
and through ``headstart inspect`` in test_inspection.py.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from headstart.data.dataset import Dataset, check_splits, demo_root, load_dataset, load_dataset_for
from headstart.data.layouts import Problem
from headstart.errors import DataError, HeadstartError
from helpers.broken_data import DATA_ERRORS
from helpers.datasets import make_food11, photo


def test_folders_in_one_root_draws_stratified_seeded_splits(tmp_path: Path):
    root = tmp_path / "pets"
    for c, name in enumerate(["dog", "cat"]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            photo(10 * c + i).save(root / name / f"img{i}.png")
    (root / "README.md").write_text("not counted: a file of the dataset, not of a class")
    ds = load_dataset(root)
    assert ds.layout == "folders"
    assert ds.classes == ["cat", "dog"]  # sorted folder names
    assert ds.counts() == {"training": [6, 6], "validation": [2, 2], "evaluation": [2, 2]}
    assert ds.drawn == ("validation", "evaluation")
    assert ds.ignored == []
    assert sorted(s.path for s in ds.samples) == sorted(root.rglob("*.png"))  # disjoint, complete

    again = load_dataset(root)
    other = load_dataset(root, seed=1)
    assert [(s.path, s.split) for s in again.samples] == [(s.path, s.split) for s in ds.samples]
    assert {(s.path, s.split) for s in other.samples} != {(s.path, s.split) for s in ds.samples}

    custom = load_dataset(root, val_fraction=0.3, eval_fraction=0.1)
    assert custom.counts() == {"training": [6, 6], "validation": [3, 3], "evaluation": [1, 1]}


def test_folders_inside_split_folders_and_missing_split_is_drawn(tmp_path: Path):
    root = tmp_path / "d"
    for split, n in (("train", 10), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c / "nested").mkdir(parents=True)
            for i in range(n):
                photo(i).save(root / split / c / "nested" / f"{split}{i}.jpg")
    ds = load_dataset(root)
    assert ds.layout == "folders"
    assert ds.drawn == ("validation",)
    assert ds.counts() == {"training": [8, 8], "validation": [2, 2], "evaluation": [2, 2]}


def test_a_drawn_split_keeps_an_image_of_each_class_in_training(tmp_path: Path):
    root = tmp_path / "d"
    for name, n in (("few", 2), ("many", 10)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            photo(i).save(root / name / f"{i}.png")
    ds = load_dataset(root, val_fraction=0.4, eval_fraction=0.4)
    # round(2 * 0.4) = 1 for validation, and the last one stays: evaluation gets none of "few".
    assert ds.counts() == {"training": [1, 2], "validation": [1, 4], "evaluation": [0, 4]}


def test_the_config_of_a_run_loads_its_dataset_split_as_it_was(tmp_path: Path):
    from headstart.config import TrainConfig

    root = tmp_path / "pets"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            photo(i).save(root / name / f"{i}.png")
    cfg = TrainConfig(data=str(root), val_fraction=0.3, eval_fraction=0.1, seed=3)
    direct = load_dataset(root, val_fraction=0.3, eval_fraction=0.1, seed=3)
    assert load_dataset_for(cfg).samples == direct.samples
    # Other data with the same classes: its own layout, the run's fractions and seed.
    make_food11(tmp_path / "food", {"training": [10, 10]})
    other = load_dataset_for(cfg, tmp_path / "food")
    assert other.layout == "food11" and other.counts()["validation"] == [3, 3]


def test_demo_word_means_the_embedded_dataset():
    ds = load_dataset("demo")
    assert ds.root == demo_root()
    assert ds.layout == "food11"
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.counts() == {"training": [100] * 10, "validation": [20] * 10, "evaluation": [30] * 10}
    licence = (ds.root / "LICENSE").read_text()
    assert "Zalando" in licence and "MIT" in licence
    size = sum(p.stat().st_size for p in ds.root.rglob("*") if p.is_file())
    assert size < 2_000_000
    with Image.open(ds.samples[0].path) as im:
        assert im.size == (28, 28) and im.mode == "L"


# --- Dataset --------------------------------------------------------------------------------


def test_without_drops_the_problems_keeps_them_listed_and_warns(tmp_path: Path, caplog):
    ds = load_dataset(make_food11(tmp_path / "d"))
    train = ds.split("training")  # classes 0, 0, 0, 0, 1, 1, ...
    bad = [Problem(train[0].path, "cannot decode: test"), Problem(train[5].path, "empty file (0 bytes)")]
    with caplog.at_level(logging.WARNING, logger="headstart.data.dataset"):
        clean = ds.without(bad)
    logged = [r.getMessage() for r in caplog.records if r.name == "headstart.data.dataset"]
    assert logged == [f"skipping {p.path}: {p.reason}" for p in bad]
    assert clean.samples == [s for s in ds.samples if s not in (train[0], train[5])]
    assert clean.problems == bad
    assert len(ds.samples) == 24 and ds.problems == []  # the original is unchanged
    assert clean.counts()["training"] == [3, 3, 4]


# --- check_splits, and the errors users see -------------------------------------------------


def test_check_splits_wants_every_split_and_every_class_in_training(tmp_path: Path):
    ds = load_dataset(make_food11(tmp_path / "d"))
    check_splits(ds)  # a usable dataset passes
    no_eval = dataclasses.replace(ds, samples=[s for s in ds.samples if s.split != "evaluation"])
    with pytest.raises(
        DataError, match=re.escape(f"The evaluation split is empty: no usable images in {ds.root / 'evaluation'}.")
    ):
        check_splits(no_eval)
    no_class_1 = Dataset(
        ds.root, ds.layout, ds.classes, [s for s in ds.samples if (s.split, s.label) != ("training", 1)]
    )
    with pytest.raises(DataError, match="Class 1 'Dairy product' has no training images"):
        check_splits(no_class_1)


def test_data_errors_are_headstart_errors_with_exit_code_2():
    assert issubclass(DataError, HeadstartError) and issubclass(DataError, ValueError)
    assert DataError("x").exit_code == 2


@pytest.mark.parametrize("case", DATA_ERRORS, ids=lambda case: case.__name__)
def test_unusable_data_is_refused_with_the_path_and_the_fix(tmp_path: Path, case):
    from helpers.broken_data import refused

    case(tmp_path, refused)


# --- reading a manifest's images outside its folder: one option, every command ----------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A manifest in a sub-folder listing the dataset's images as ``../training/0_0.jpg``: refused
    unless allowed."""
    from helpers.broken_data import manifest_rows, write_manifest

    root = make_food11(tmp_path / "d")
    (root / "lists").mkdir()
    return write_manifest(root / "lists" / "manifest.csv", [f"../{r}" for r in manifest_rows(root, header=False)])


def test_allow_outside_root_is_an_option_of_the_config(outside: Path):
    from headstart.config import TrainConfig, resolve_config

    with pytest.raises(DataError, match="outside the dataset's folder"):
        load_dataset_for(TrainConfig(data=str(outside)))
    cfg = resolve_config(overrides={"data": str(outside), "allow_outside_root": "true"})  # as YAML or a flag gives it
    assert cfg.allow_outside_root is True and TrainConfig().allow_outside_root is False
    assert len(load_dataset_for(cfg).samples) == 24


@pytest.mark.parametrize("command", ["inspect", "train", "compare", "advise"])
def test_every_command_taking_data_refuses_outside_paths_unless_allowed(outside: Path, tmp_path: Path, command: str):
    """Without the flag: exit 2, naming the line and the flag. With it the data is read, and the
    command goes on to the next thing it checks: here an unknown backbone (inspect: it succeeds)."""
    from typer.testing import CliRunner

    from headstart.cli.main import app

    runner = CliRunner()
    runs = ["--runs-dir", str(tmp_path / "runs")]
    args = {
        "inspect": ["--out", str(tmp_path / "out")],
        "advise": ["--backbone", "vgg61"],
        "train": ["--backbone", "vgg61", *runs],
        "compare": ["--backbone", "vgg61", "--strategies", "features", *runs],
    }[command]
    refused = runner.invoke(app, [command, str(outside), *args])
    assert refused.exit_code == 2, refused.output
    message = " ".join(refused.output.split())
    assert f"{outside}, line 1: '../training/0_0.jpg' is outside" in message and "--allow-outside-root" in message
    allowed = runner.invoke(app, [command, str(outside), *args, "--allow-outside-root"])
    message = " ".join(allowed.output.split())
    if command == "inspect":
        assert allowed.exit_code == 0, message
        assert "Training data available in 3 classes" in message
    else:
        assert allowed.exit_code == 2 and "Unknown backbone 'vgg61'" in message, message


def test_evaluate_on_other_data_outside_its_folder(tiny_run, outside: Path):
    from typer.testing import CliRunner

    from headstart.cli.main import app

    runner = CliRunner()
    args = ["evaluate", str(tiny_run.dir), "--data", str(outside), "--split", "validation"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--allow-outside-root" in " ".join(refused.output.split()), refused.output
    # Read with the flag: then its classes (cat, coffee, astronaut) are not the run's, the next check.
    allowed = runner.invoke(app, [*args, "--allow-outside-root"])
    assert allowed.exit_code == 2 and "are not the run's" in " ".join(allowed.output.split()), allowed.output


def test_a_split_drawn_empty_from_a_short_manifest_says_what_to_change(tmp_path: Path):
    root = make_food11(tmp_path / "d", {"training": [1, 1, 1], "validation": [0, 0, 0], "evaluation": [1, 1, 1]})
    rows = ["path,label,split"] + [
        f"{p.relative_to(root)},{p.name.split('_')[0]},{p.parent.name}" for p in sorted(root.rglob("*.jpg"))
    ]
    (root / "classes.txt").write_text("cat\ncoffee\nastronaut\n")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as refused:
        load_dataset(root / "manifest.csv")
    assert "remove the folder" not in str(refused.value)
    assert "drawn from training, which is too small" in str(refused.value) or "give no row" in str(refused.value)


def test_a_class_without_validation_images_is_warned_about(tmp_path: Path, caplog):
    root = make_food11(tmp_path / "d", {"training": [3, 3, 3], "validation": [1, 1, 0], "evaluation": [1, 1, 1]})
    with caplog.at_level(logging.WARNING, logger="headstart.data.dataset"):
        load_dataset(root)
    assert "1 class(es) have no validation image" in caplog.text
