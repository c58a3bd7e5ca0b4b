"""Datasets that must be refused, one builder each, with the check they must pass; manifests by hand."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from headstart.data.dataset import load_dataset
from headstart.data.images import decode_image
from headstart.errors import DataError, ImageError
from helpers.datasets import make_food11, photo

NAMES = ("cat", "coffee", "astronaut")  # the classes of make_food11's photos, by label


def manifest_rows(root: Path, header: bool = True) -> list[str]:
    """A manifest's lines listing every image of a make_food11 dataset: path,label name,split."""
    rows = ["path,label,split"] if header else []
    for split in ("training", "validation", "evaluation"):
        for p in sorted((root / split).iterdir()):
            rows.append(f"{split}/{p.name},{NAMES[int(p.name[0])]},{split}")
    return rows


def write_manifest(path: Path, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode(encoding))
    return path


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
    check(
        root,
        f"{root} mixes layouts",
        "training, validation hold loose image files",
        "evaluation hold class sub-folders",
    )


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
    check(root, f"{manifest}, line 1: unknown split 'holdout'")
    manifest.write_text("training/0_0.jpg,0\ntraining/1_4.jpg,1\n")
    check(root, "Label id 0", f"{manifest}, line 1", "there is no")


def csv_file_listed_twice(tmp_path: Path, check) -> None:
    """One file on two lines is refused, whatever the lines say: in two splits it is a leak (trained
    on and evaluated), with two labels one is wrong, and twice the same is counted twice (or,
    splits drawn, drawn into two splits)."""
    root = make_food11(tmp_path / "d")
    rows = manifest_rows(root)  # line 2: training/0_0.jpg,cat,training
    manifest = root / "manifest.csv"
    end = len(rows) + 1  # the line number of a row added at the end
    write_manifest(manifest, rows + ["./training/0_0.jpg,cat,evaluation"])
    check(
        root,
        f"{manifest} lists a file more than once",
        f"lines 2 and {end}",
        str(root / "training" / "0_0.jpg"),
        "in the training and the evaluation split (a leak",
        "delete the other lines",
    )
    write_manifest(manifest, rows + ["training/0_0.jpg,coffee,training"])
    check(root, f"lines 2 and {end} give", "different labels ('cat', 'coffee')")
    write_manifest(manifest, rows + [rows[1]])
    check(root, f"lines 2 and {end} list", "more than once")
    write_manifest(manifest, [",".join(r.split(",")[:2]) for r in rows + [rows[1], rows[1]]])
    check(root, f"lines 2, {end} and {end + 1} list", "more than once")


def csv_path_outside_its_folder(tmp_path: Path, check) -> None:
    """A manifest reads images inside its own folder: ``../`` or an absolute path elsewhere is refused,
    naming the line and the option that allows it."""
    root = make_food11(tmp_path / "d")
    (root / "lists").mkdir()
    manifest = root / "lists" / "manifest.csv"
    write_manifest(manifest, [f"../{r}" for r in manifest_rows(root, header=False)])
    check(
        manifest,
        f"{manifest}, line 1: '../training/0_0.jpg' is outside the dataset's folder {root / 'lists'}",
        "and 23 more lines",
        "--allow-outside-root",
    )
    rows = manifest_rows(root)
    rows[5] = f"{root / 'training' / '1_4.jpg'},coffee,training"  # absolute, elsewhere
    write_manifest(root / "lists" / "manifest.csv", [r for r in rows if not r.startswith("training/1_4.jpg")])
    check(manifest, f"{manifest}, line 6: '{root / 'training' / '1_4.jpg'}' is outside", "--allow-outside-root")


def csv_not_utf8_or_not_csv(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    manifest = root / "manifest.csv"
    rows = manifest_rows(root)
    rows[3] = rows[3].replace("0_", "caf\u00e9_0_")
    write_manifest(manifest, rows, "latin-1")
    check(root, f"{manifest}, line 4: not UTF-8 text", "Save the file as UTF-8")
    manifest.write_text("path,label\n" + f"training/{'x' * 200_000}.jpg,cat\n")
    check(root, f"{manifest}, line 2: not a CSV row (field larger than field limit")
    manifest.write_text("path,label\ntraining/0_0.jpg," + "1" * 5000 + "\n")
    check(root, f"{manifest}, line 2: label id 111111111111111111111111... has no class name")


def food11_label_of_other_digits(tmp_path: Path, check) -> None:
    """``²`` is a digit to ``str.isdigit`` but not to ``int``: not a class id."""
    root = make_food11(tmp_path / "d")
    photo(0).save(root / "training" / "\u00b2_1.jpg")
    check(root, "no class id in their name", "\u00b2_1.jpg")


LAYOUT_ERRORS = [
    label_id_without_class_name,
    file_name_without_label,
    mixed_layouts_inside_a_split,
    mixed_layouts_across_splits,
    split_folders_beside_class_folders,
    two_folders_for_one_split,
    csv_rows,
    csv_file_listed_twice,
    csv_path_outside_its_folder,
    csv_not_utf8_or_not_csv,
    food11_label_of_other_digits,
]


def refused(data: Path, *needles: str, **options) -> None:
    """``load_dataset(data, **options)`` raises a DataError whose message holds every needle."""
    with pytest.raises(DataError) as raised:
        load_dataset(data, **options)
    for needle in needles:
        assert needle in str(raised.value), str(raised.value)


def add_broken_links(folder: Path, prefix: str = "") -> dict[str, str]:
    """A self-referencing link and a dangling one in ``folder``; the reason decode_image gives for each."""
    loop, dangling = folder / f"{prefix}loop.jpg", folder / f"{prefix}dangling.jpg"
    os.symlink(loop.name, loop)
    os.symlink("nowhere.jpg", dangling)
    reasons = {}
    for link in (loop, dangling):
        with pytest.raises(ImageError) as raised:
            decode_image(link, 1000)
        reasons[link.name] = str(raised.value)
    return reasons


# Each case calls ``check(data, *needles, **options)``: see test_layouts.py.


def empty_split(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d")
    for f in (root / "validation").iterdir():
        f.unlink()
    check(root, "The validation split is empty", str(root / "validation"), "remove the folder to draw it from training")


def class_without_training_images(tmp_path: Path, check) -> None:
    root = make_food11(tmp_path / "d", {"training": [2, 2, 0], "validation": [1, 1, 1], "evaluation": [1, 1, 1]})
    check(root, "Class 2 'Dessert' has no training images in", str(root / "training"))


def missing_data_and_bad_fractions(tmp_path: Path, check) -> None:
    check(tmp_path / "nope", f"DATA '{tmp_path / 'nope'}' does not exist", "'demo'")
    root = make_food11(tmp_path / "d")
    check(root, "received 0.6 + 0.5", val_fraction=0.6, eval_fraction=0.5)


def link_to_another_image(tmp_path: Path, check) -> None:
    """A link to another image of the dataset is one file twice: in another split, a leak."""
    root = make_food11(tmp_path / "d")
    link = root / "evaluation" / "0_99.jpg"
    os.symlink(root / "training" / "0_0.jpg", link)
    check(
        root,
        f"{root / 'training' / '0_0.jpg'} and {link} are the same file",
        "in the training and the evaluation split, a leak",
        "delete the other (a link)",
    )
    link.unlink()
    os.symlink("0_1.jpg", root / "training" / "0_99.jpg")
    check(root, "are the same file", "in the training split twice")


DATA_ERRORS = [empty_split, class_without_training_images, missing_data_and_bad_fractions, link_to_another_image]
