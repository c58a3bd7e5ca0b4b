"""Layouts: how each is detected and read (food11, folders, csv), class names, and what is refused.

The refusals are listed in LAYOUT_ERRORS: each builds an unusable dataset and checks the
DataError it gets. Here it is checked on ``load_dataset``; test_inspection.py checks the same
cases through ``headstart inspect`` (exit code 2, the same message, nothing written).
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from conftest import food11_to_csv, food11_to_folders, make_food11, photo

from headstart.data import layouts as layouts
from headstart.data.dataset import load_dataset
from headstart.data.images import decode_image
from headstart.data.inspection import verify_images
from headstart.data.layouts import FOOD11_CLASSES, detect_layout, read_classes_file, read_layout
from headstart.errors import DataError, ImageError

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
    check(root, f"{manifest} lists a file more than once", f"lines 2 and {end}", str(root / "training" / "0_0.jpg"),
          "in the training and the evaluation split (a leak", "delete the other lines")
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
    check(manifest, f"{manifest}, line 1: '../training/0_0.jpg' is outside the dataset's folder {root / 'lists'}",
          "and 23 more lines", "--allow-outside-root")
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


LAYOUT_ERRORS = [label_id_without_class_name, file_name_without_label, mixed_layouts_inside_a_split,
                 mixed_layouts_across_splits, split_folders_beside_class_folders, two_folders_for_one_split,
                 csv_rows, csv_file_listed_twice, csv_path_outside_its_folder, csv_not_utf8_or_not_csv,
                 food11_label_of_other_digits]


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

    from headstart.data.dataset import load_dataset

    root = make_food11(tmp_path / "food")
    (root / "manifest.csv").write_text("split,file,class_id,class_name,source\ntraining,0_0.jpg,0,Bread,web\n")
    with caplog.at_level(logging.WARNING, logger="headstart.data.layouts"):
        ds = load_dataset(root)
    assert ds.layout == "food11" and len(ds.split("training")) == 12
    assert f"{root / 'manifest.csv'} is not a headstart manifest" in caplog.text
    (root / "manifest.csv").write_text("path,label\ntraining/0_0.jpg,cat\ntraining/1_4.jpg,dog\n")  # one of ours: it decides
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
        reasons = {name: f"listed in manifest.csv, line {len(rows) - 1 + i}, but {reason}"
                   for i, (name, reason) in enumerate(reasons.items())}
    ds = load_dataset(root)
    assert ds.layout == layout
    assert {p.path.name: p.reason for p in ds.problems} == reasons
    assert reasons["0_loop.jpg" if layout != "folders" else "loop.jpg"].endswith(
        "cannot read: Too many levels of symbolic links")
    assert ds.counts() == {"training": [4, 4, 4], "validation": [2, 2, 2], "evaluation": [2, 2, 2]}
    checked, _ = verify_images(ds, progress=False)
    assert checked.problems == ds.problems  # nothing left for inspect to find
