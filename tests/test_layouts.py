"""Layouts: how each is detected and read (food11, folders, csv), class names, and what is refused.

The refusals are listed in LAYOUT_ERRORS: each builds an unusable dataset and checks the
DataError it gets. Here it is checked on ``load_dataset``; test_inspection.py checks the same
cases through ``headstart inspect`` (exit code 2, the same message, nothing written).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from conftest import food11_to_csv, food11_to_folders, make_food11, photo
from headstart import layouts
from headstart.data import load_dataset
from headstart.errors import DataError
from headstart.inspection import verify_images
from headstart.layouts import FOOD11_CLASSES, detect_layout, read_classes_file, read_layout

MESSY_COUNTS = {"training": [4, 4, 5], "validation": [3, 2, 2], "evaluation": [2, 2, 2]}


def test_messy_data_as_folders_and_csv_gives_the_same_counts(messy: Path, tmp_path: Path):
    folders = food11_to_folders(messy, tmp_path / "folders")
    manifest = food11_to_csv(messy, messy / "labels.csv")
    results = {}
    for layout, path in (("food11", messy), ("folders", folders), ("csv", manifest)):
        assert detect_layout(path) == layout
        ds = load_dataset(path)
        assert ds.layout == layout
        ds, images = verify_images(ds, progress=False)
        assert ds.counts() == MESSY_COUNTS, layout
        assert [p.path.name for p in ds.problems] == ["1_90.jpg"], layout
        assert [p.name for p in ds.ignored] == ["notes.txt"], layout
        assert ds.classes == ["Bread", "Dairy", "Dessert"]
        results[layout] = sorted((s.path.name, s.label, s.split) for s in ds.samples)
    assert results["food11"] == results["folders"] == results["csv"]


def test_readers_list_files_and_decode_nothing(messy: Path):
    """A reader lists: the corrupt JPEG is still a sample (verify_images finds it), notes.txt is ignored."""
    listing = read_layout(messy)
    assert listing.layout == "food11"
    assert listing.sources == {split: messy / split for split in layouts.SPLITS}
    assert "1_90.jpg" in {s.path.name for s in listing.samples}
    assert [p.name for p in listing.ignored] == ["notes.txt"] and listing.problems == []


# --- food11 ---------------------------------------------------------------------------------


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
    assert load_dataset(root).classes == list(FOOD11_CLASSES)
    assert FOOD11_CLASSES[6] == "Noodles/Pasta" and len(FOOD11_CLASSES) == 11


# --- class names ----------------------------------------------------------------------------


def test_classes_txt_names_the_ids(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    (root / "classes.txt").write_text("cat\ncoffee\n\nastronaut\n")  # blank lines ignored
    assert load_dataset(root).classes == ["cat", "coffee", "astronaut"]


def test_classes_txt_that_names_nothing_or_a_class_twice_is_refused(tmp_path: Path):
    path = tmp_path / "classes.txt"
    assert read_classes_file(path) is None  # no file: the layout's own names
    path.write_text("cat\ndog\ncat\n")
    with pytest.raises(DataError, match=f"{path} names a class more than once: cat"):
        read_classes_file(path)
    path.write_text("\n \n")
    with pytest.raises(DataError, match=f"{path} is empty"):
        read_classes_file(path)


# --- csv ------------------------------------------------------------------------------------


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


# --- forcing a layout -----------------------------------------------------------------------


def test_layout_can_be_forced(messy: Path):
    with pytest.raises(DataError, match="Unknown layout 'imagenet'. Choose one of: food11, folders, csv"):
        load_dataset(messy, layout="imagenet")
    # Forcing 'folders' on food11 data finds no class folders: a clear error, not a crash.
    with pytest.raises(DataError, match="No training images found"):
        load_dataset(messy, layout="folders")


# --- refusals: a message naming the path and the fix ----------------------------------------
# Each case calls ``check(data, *needles)`` for every unusable state it builds: ``data`` must be
# refused with a DataError whose message holds every needle.


def label_id_without_class_name(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    photo(0).save(root / "training" / "12_7.jpg")
    check(root, "Label id 12", str(root / "training" / "12_7.jpg"), "classes.txt")
    (root / "classes.txt").write_text("a\nb\nc\n")
    check(root, "Label id 12", "has 3 names")


def file_name_without_label(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    photo(0).save(root / "validation" / "cat.jpg")
    check(root, "no class id in their name", str(root / "validation" / "cat.jpg"), "<class id>_<n>.jpg")


def mixed_layouts_inside_a_split(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    (root / "training" / "cats").mkdir()
    photo(0).save(root / "training" / "cats" / "a.jpg")
    check(root, str(root / "training"), "a mix of the 'food11' layout")


def mixed_layouts_across_splits(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    shutil.rmtree(root / "evaluation")
    (root / "evaluation" / "cats").mkdir(parents=True)
    photo(0).save(root / "evaluation" / "cats" / "a.jpg")
    check(root, f"{root} mixes layouts", "training, validation hold loose image files",
          "evaluation hold class sub-folders")


def split_folders_beside_class_folders(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    (root / "dogs").mkdir()
    photo(0).save(root / "dogs" / "a.jpg")
    check(root, str(root), "other folders with images (dogs)")


def two_folders_for_one_split(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    make_food11(root, {"train": [1, 1, 1]})
    check(root, "two folders for the training split", "'train'", "'training'")


def csv_rows(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    manifest = root / "manifest.csv"
    manifest.write_text("training/0_0.jpg,0,training\ntraining/1_4.jpg,1\n")
    check(root, str(manifest), "a split for some rows and not for others")
    manifest.write_text("training/0_0.jpg,0,holdout\n")
    check(root, f"{manifest}, row 1: unknown split 'holdout'")
    manifest.write_text("training/0_0.jpg,0\ntraining/1_4.jpg,1\n")
    check(root, "Label id 0", f"{manifest}, row 1", "there is no")


LAYOUT_ERRORS = [label_id_without_class_name, file_name_without_label, mixed_layouts_inside_a_split,
                 mixed_layouts_across_splits, split_folders_beside_class_folders, two_folders_for_one_split,
                 csv_rows]


def refused(data: Path, *needles: str, **options) -> None:
    """``load_dataset(data, **options)`` raises a DataError whose message holds every needle."""
    with pytest.raises(DataError) as raised:
        load_dataset(data, **options)
    for needle in needles:
        assert needle in str(raised.value), str(raised.value)


@pytest.mark.parametrize("case", LAYOUT_ERRORS, ids=lambda case: case.__name__)
def test_unusable_layouts_are_refused_with_the_path_and_the_fix(tmp_path: Path, case):
    case(tmp_path, refused)


def test_a_foreign_manifest_does_not_decide_the_layout(tmp_path: Path, caplog):
    import logging

    from conftest import make_food11

    from headstart.data import load_dataset

    root = make_food11(tmp_path / "food")
    (root / "manifest.csv").write_text("split,file,class_id,class_name,source\ntraining,0_0.jpg,0,Bread,web\n")
    with caplog.at_level(logging.WARNING, logger="headstart.layouts"):
        ds = load_dataset(root)
    assert ds.layout == "food11" and len(ds.split("training")) == 12
    assert f"{root / 'manifest.csv'} is not a headstart manifest" in caplog.text
    (root / "manifest.csv").write_text("path,label\ntraining/0_0.jpg,cat\ntraining/1_4.jpg,dog\n")  # one of ours: it decides
    assert detect_layout(root) == "csv"
