"""Layouts: how each is detected and read (food11, folders, csv), class names, and what is refused.

The refusals are listed in LAYOUT_ERRORS: each builds an unusable dataset and checks the
DataError it gets. Here it is checked on ``load_dataset``; test_inspection.py checks the same
cases through ``headstart inspect`` (exit code 2, the same message, nothing written).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from headstart.data import layouts as layouts
from headstart.data.dataset import load_dataset
from headstart.data.inspection import verify_images
from headstart.data.layouts import FOOD11_CLASSES, detect_layout, read_classes_file, read_layout
from headstart.errors import DataError
from helpers.broken_data import LAYOUT_ERRORS, NAMES, add_broken_links, manifest_rows, refused, write_manifest
from helpers.datasets import food11_to_csv, food11_to_folders, make_food11, photo

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


@pytest.mark.parametrize("columns", [2, 3])
def test_csv_with_a_byte_order_mark_reads_its_header_as_a_header(tmp_path: Path, columns: int):
    """Excel's "CSV UTF-8" starts with a byte-order mark: the header stays a header, not a row
    whose label 'label' would be a class of its own."""
    root = make_food11(tmp_path / "d")
    rows = [",".join(r.split(",")[:columns]) for r in manifest_rows(root)]
    write_manifest(root / "manifest.csv", rows, "utf-8-sig")
    assert detect_layout(root) == "csv"
    ds = load_dataset(root)
    assert ds.classes == sorted(NAMES) and ds.ignored == [] and ds.problems == []
    assert len(ds.samples) == 24
    (root / "classes.txt").write_bytes("cat\ncoffee\nastronaut\n".encode("utf-8-sig"))  # Notepad's BOM
    assert load_dataset(root).classes == list(NAMES)


def test_csv_line_numbers_are_the_files_lines(tmp_path: Path):
    """Errors name the line of the file, counting the header and blank lines."""
    root = make_food11(tmp_path / "d")
    rows = manifest_rows(root)
    rows[3:3] = ["", "training/0_1.jpg,cat,holdout"]
    manifest = write_manifest(root / "manifest.csv", rows)
    with pytest.raises(DataError, match=f"{manifest}, line 5: unknown split 'holdout'"):
        load_dataset(root)


# --- forcing a layout -----------------------------------------------------------------------


def test_layout_can_be_forced(messy: Path):
    with pytest.raises(DataError, match="Unknown layout 'imagenet'. Choose one of: food11, folders, csv"):
        load_dataset(messy, layout="imagenet")
    # Forcing 'folders' on food11 data finds no class folders: a clear error, not a crash.
    with pytest.raises(DataError, match="No training images found"):
        load_dataset(messy, layout="folders")


@pytest.mark.parametrize("case", LAYOUT_ERRORS, ids=lambda case: case.__name__)
def test_unusable_layouts_are_refused_with_the_path_and_the_fix(tmp_path: Path, case):
    case(tmp_path, refused)


def test_a_foreign_manifest_does_not_decide_the_layout(tmp_path: Path, caplog):
    import logging

    from headstart.data.dataset import load_dataset
    from helpers.datasets import make_food11

    root = make_food11(tmp_path / "food")
    (root / "manifest.csv").write_text("split,file,class_id,class_name,source\ntraining,0_0.jpg,0,Bread,web\n")
    with caplog.at_level(logging.WARNING, logger="headstart.data.layouts"):
        ds = load_dataset(root)
    assert ds.layout == "food11" and len(ds.split("training")) == 12
    assert f"{root / 'manifest.csv'} is not a headstart manifest" in caplog.text
    (root / "manifest.csv").write_text(
        "path,label\ntraining/0_0.jpg,cat\ntraining/1_4.jpg,dog\n"
    )  # one of ours: it decides
    assert detect_layout(root) == "csv"


# --- what may be read: outside the manifest's folder, links ---------------------------------


def test_allow_outside_root_reads_a_manifest_listing_images_elsewhere(tmp_path: Path):
    root = make_food11(tmp_path / "d")
    (root / "lists").mkdir()
    manifest = write_manifest(root / "lists" / "train.csv", [f"../{r}" for r in manifest_rows(root, header=False)])
    with pytest.raises(DataError, match="--allow-outside-root"):
        load_dataset(manifest)
    ds = load_dataset(manifest, allow_outside_root=True)
    assert len(ds.samples) == 24 and ds.root == root / "lists"
    assert {s.path.resolve() for s in ds.samples} == {p for p in root.rglob("*.jpg")}


def test_a_linked_folder_inside_the_manifests_folder_may_be_read(tmp_path: Path):
    """Links put in the dataset's folder are its owner's choice (as in the other layouts): a path
    inside the folder as written is read, even where the link leads elsewhere."""
    images = make_food11(tmp_path / "images")
    root = tmp_path / "d"
    root.mkdir()
    os.symlink(images, root / "images", target_is_directory=True)
    write_manifest(root / "manifest.csv", [f"images/{r}" for r in manifest_rows(images, header=False)])
    assert len(load_dataset(root).samples) == 24


@pytest.mark.parametrize("layout", ["food11", "folders", "csv"])
def test_dangling_and_looping_links_are_problems_not_samples(tmp_path: Path, layout: str):
    """Listing skips them with the reason inspect gives, so nothing after it (the cache key, the
    decoder) meets a file it cannot read."""
    root = make_food11(tmp_path / "d")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    rows = manifest_rows(root)
    if layout == "folders":
        root = food11_to_folders(root, tmp_path / "folders")
        reasons = add_broken_links(root / "training" / "cat")
    else:
        reasons = add_broken_links(root / "training", prefix="0_")
    if layout == "csv":
        rows += [f"training/{name},cat,training" for name in reasons]
        write_manifest(root / "manifest.csv", rows)
        reasons = {
            name: f"listed in manifest.csv, line {len(rows) - 1 + i}, but {reason}"
            for i, (name, reason) in enumerate(reasons.items())
        }
    ds = load_dataset(root)
    assert ds.layout == layout
    assert {p.path.name: p.reason for p in ds.problems} == reasons
    assert reasons["0_loop.jpg" if layout != "folders" else "loop.jpg"].endswith(
        "cannot read: Too many levels of symbolic links"
    )
    assert ds.counts() == {"training": [4, 4, 4], "validation": [2, 2, 2], "evaluation": [2, 2, 2]}
    checked, _ = verify_images(ds, progress=False)
    assert checked.problems == ds.problems  # nothing left for inspect to find
