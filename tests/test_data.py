"""The data layer: layouts, class names, splits, broken files, and the errors users see."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import food11_to_csv, food11_to_folders, make_food11, photo
from headstart import data
from headstart.cli import app
from headstart.data import DataError, load_dataset, verify_images

runner = CliRunner()
MESSY_COUNTS = {"training": [4, 4, 5], "validation": [3, 2, 2], "evaluation": [2, 2, 2]}


def inspect_cli(*args: str):
    return runner.invoke(app, ["inspect", *map(str, args)])


# --- the example, in all three layouts ----------------------------------------------


def test_inspect_messy_food11_counts_problems_and_pictures(messy: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = inspect_cli(messy, "--out", out)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "layout food11, 3 classes" in text
    # The tutorial's own line, per split, with the right counts.
    assert "Training data available in 3 classes\n[4, 4, 5]" in text
    assert "Validation data available in 3 classes\n[3, 2, 2]" in text
    assert "Evaluation data available in 3 classes\n[2, 2, 2]" in text
    assert "Skipped 1 unreadable image(s)" in text
    assert f"{messy / 'training' / '1_90.jpg'}: cannot decode" in text
    assert "Ignored 1 file(s) that are not images: notes.txt" in text
    assert "CMYK 1" in text and "RGBA 1" in text
    for name in ("class_distribution.png", "samples.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200
    summary = json.loads((out / "inspect.json").read_text())
    assert summary["counts"] == MESSY_COUNTS
    assert summary["problems"][0]["path"].endswith("1_90.jpg")
    assert summary["imbalance"] == 1.25


def test_messy_data_as_folders_and_csv_gives_the_same_counts(messy: Path, tmp_path: Path):
    folders = food11_to_folders(messy, tmp_path / "folders")
    manifest = food11_to_csv(messy, messy / "labels.csv")
    results = {}
    for layout, path in (("food11", messy), ("folders", folders), ("csv", manifest)):
        ds = load_dataset(path)
        assert ds.layout == layout
        ds, images = verify_images(ds, progress=False)
        assert ds.counts() == MESSY_COUNTS, layout
        assert [p.path.name for p in ds.problems] == ["1_90.jpg"], layout
        assert [p.name for p in ds.ignored] == ["notes.txt"], layout
        assert ds.classes == ["Bread", "Dairy", "Dessert"]
        results[layout] = sorted((s.path.name, s.label, s.split) for s in ds.samples)
    assert results["food11"] == results["folders"] == results["csv"]


# --- layouts --------------------------------------------------------------------------------


def test_food11_label_is_the_integer_before_the_first_underscore(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    photo(0).save(root / "training" / "2_extra_name.jpg")
    ds = load_dataset(root)
    by_name = {s.path.name: s.label for s in ds.samples}
    assert by_name["2_extra_name.jpg"] == 2
    assert all(by_name[name] == int(name.split("_")[0]) for name in by_name)


def test_food11_with_short_split_names(tmp_path: Path):
    root = make_food11(tmp_path / "d", {"train": [2, 2], "val": [1, 1], "test": [1, 1]})
    ds = load_dataset(root)
    assert ds.layout == "food11"
    assert ds.counts() == {"training": [2, 2], "validation": [1, 1], "evaluation": [1, 1]}
    # No classes.txt and ids within 0-10: the Food-11 names, as in the tutorial.
    assert ds.classes == ["Bread", "Dairy product"]


def test_food11_default_names_are_the_tutorials_eleven(tmp_path: Path):
    root = make_food11(tmp_path / "d", {"training": [1] * 11, "validation": [1] * 11, "evaluation": [1] * 11})
    assert load_dataset(root).classes == list(data.FOOD11_CLASSES)
    assert data.FOOD11_CLASSES[6] == "Noodles/Pasta" and len(data.FOOD11_CLASSES) == 11


def test_classes_txt_names_the_ids(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    (root / "classes.txt").write_text("cat\ncoffee\n\nastronaut\n")  # blank lines ignored
    assert load_dataset(root).classes == ["cat", "coffee", "astronaut"]


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


def test_csv_with_ids_classes_txt_no_split_and_no_header(tmp_path: Path):
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(20):
        photo(i).save(root / "img" / f"{i}.webp")
        rows.append([f"img/{i}.webp", str(i % 2)])
    rows.append(["img/missing.jpg", "0"])
    rows.append(["img/readme.txt", "1"])
    with (root / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (root / "classes.txt").write_text("even\nodd\n")
    ds = load_dataset(root)
    assert ds.layout == "csv"
    assert ds.classes == ["even", "odd"]
    assert ds.counts() == {"training": [6, 6], "validation": [2, 2], "evaluation": [2, 2]}
    assert [(p.path.name, "not found" in p.reason) for p in ds.problems] == [("missing.jpg", True)]
    assert [p.name for p in ds.ignored] == ["readme.txt"]


def test_layout_can_be_forced(messy: Path):
    with pytest.raises(DataError, match="Unknown layout 'imagenet'. Choose one of: food11, folders, csv"):
        load_dataset(messy, layout="imagenet")
    # Forcing 'folders' on food11 data finds no class folders: a clear error, not a crash.
    with pytest.raises(DataError, match="No training images found"):
        load_dataset(messy, layout="folders")


def test_demo_word_means_the_embedded_dataset():
    ds = load_dataset("demo")
    assert ds.root == data.demo_root()
    assert ds.layout == "food11"
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.counts() == {"training": [100] * 10, "validation": [20] * 10, "evaluation": [30] * 10}
    licence = (ds.root / "LICENSE").read_text()
    assert "Zalando" in licence and "MIT" in licence
    size = sum(p.stat().st_size for p in ds.root.rglob("*") if p.is_file())
    assert size < 2_000_000
    with Image.open(ds.samples[0].path) as im:
        assert im.size == (28, 28) and im.mode == "L"


# --- broken images --------------------------------------------------------------------------


def test_broken_images_are_skipped_listed_and_warned(tmp_path: Path, caplog):
    root = make_food11(tmp_path / "d")
    train = root / "training"
    (train / "0_100.jpg").write_bytes(b"")
    good = train / "1_4.jpg"
    blob = good.read_bytes()
    (train / "1_101.jpg").write_bytes(blob[: len(blob) // 2])
    (train / "2_102.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    ds = load_dataset(root)
    assert len(ds.split("training")) == 15  # scanning decodes nothing
    with caplog.at_level(logging.WARNING, logger="headstart.data"):
        clean, images = verify_images(ds, progress=False)
    reasons = {p.path.name: p.reason for p in clean.problems}
    assert reasons["0_100.jpg"] == "empty file (0 bytes)"
    assert "truncated" in reasons["1_101.jpg"].lower()
    assert reasons["2_102.png"].startswith("cannot decode")
    assert clean.counts()["training"] == [4, 4, 4]
    assert len(images) == len(clean.samples) == 24
    assert sum("skipping" in r.message for r in caplog.records) == 3


def test_all_images_of_a_split_broken_is_an_empty_split(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    for f in (root / "evaluation").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"The evaluation split is empty: no usable images in {root}"):
        verify_images(load_dataset(root), progress=False)


# --- errors: exit code 2, a message naming the path, nothing written ------------------------


def _assert_error(tmp_path: Path, dataset: Path, *needles: str, args: tuple = ()):
    out = tmp_path / "out"
    result = inspect_cli(dataset, "--out", out, *args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())  # rich may break long lines
    assert message.startswith("error:")
    for needle in needles:
        assert needle in message, message
    assert not out.exists(), "nothing may be written when the data is unusable"
    return message


def test_error_empty_split(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    for f in (root / "validation").iterdir():
        f.unlink()
    _assert_error(tmp_path, root, "The validation split is empty", str(root / "validation"),
                  "remove the folder to draw it from training")


def test_error_class_without_training_images(tmp_path: Path):
    root = make_food11(tmp_path / "d", {"training": [2, 2, 0], "validation": [1, 1, 1], "evaluation": [1, 1, 1]})
    _assert_error(tmp_path, root, "Class 2 'Dessert' has no training images in", str(root / "training"))


def test_error_label_id_without_class_name(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    photo(0).save(root / "training" / "12_7.jpg")
    _assert_error(tmp_path, root, "Label id 12", str(root / "training" / "12_7.jpg"), "classes.txt")
    (root / "classes.txt").write_text("a\nb\nc\n")
    _assert_error(tmp_path, root, "Label id 12", "has 3 names")


def test_error_file_name_without_label(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    photo(0).save(root / "validation" / "cat.jpg")
    _assert_error(tmp_path, root, "no class id in their name", str(root / "validation" / "cat.jpg"),
                  "<class id>_<n>.jpg")


def test_error_mixed_layouts_inside_a_split(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    (root / "training" / "cats").mkdir()
    photo(0).save(root / "training" / "cats" / "a.jpg")
    _assert_error(tmp_path, root, str(root / "training"), "a mix of the 'food11' layout")


def test_error_mixed_layouts_across_splits(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    shutil.rmtree(root / "evaluation")
    (root / "evaluation" / "cats").mkdir(parents=True)
    photo(0).save(root / "evaluation" / "cats" / "a.jpg")
    _assert_error(tmp_path, root, f"{root} mixes layouts", "training, validation hold loose image files",
                  "evaluation hold class sub-folders")


def test_error_split_folders_beside_class_folders(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    (root / "dogs").mkdir()
    photo(0).save(root / "dogs" / "a.jpg")
    _assert_error(tmp_path, root, str(root), "other folders with images (dogs)")


def test_error_two_folders_for_one_split(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    make_food11(root, {"train": [1, 1, 1]})
    _assert_error(tmp_path, root, "two folders for the training split", "'train'", "'training'")


def test_error_missing_data_and_bad_fractions(tmp_path: Path):
    _assert_error(tmp_path, tmp_path / "nope", f"DATA '{tmp_path / 'nope'}' does not exist", "'demo'")
    root = make_food11(tmp_path / "d")
    _assert_error(tmp_path, root, "received 0.6 + 0.5", args=("--val-fraction", "0.6", "--eval-fraction", "0.5"))


def test_error_csv_rows(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    manifest = root / "manifest.csv"
    manifest.write_text("training/0_0.jpg,0,training\ntraining/1_4.jpg,1\n")
    _assert_error(tmp_path, root, str(manifest), "a split for some rows and not for others")
    manifest.write_text("training/0_0.jpg,0,holdout\n")
    _assert_error(tmp_path, root, f"{manifest}, row 1: unknown split 'holdout'")
    manifest.write_text("training/0_0.jpg,0\ntraining/1_4.jpg,1\n")
    _assert_error(tmp_path, root, "Label id 0", f"{manifest}, row 1", "there is no")


def test_console_script_runs_and_exits_2_on_bad_data(tmp_path: Path):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "headstart"
    ok = subprocess.run([exe, "inspect", "demo", "--out", tmp_path / "demo"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "Training data available in 10 classes" in ok.stdout
    assert (tmp_path / "demo" / "samples.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "-m", "headstart", "inspect", tmp_path / "nope"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert f"DATA '{tmp_path / 'nope'}' does not exist" in " ".join(bad.stderr.split())
