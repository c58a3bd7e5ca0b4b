"""Dataset layouts: which files are the images, what class each is, and which split.

The tutorial reads Food-11 by listing ``training/ validation/ evaluation/`` and taking the label
from the file name (``9_1339.jpg`` is class 9). headstart reads that layout and two more:

- ``food11``: split folders ``training/ validation/ evaluation/`` (or ``train/ val|valid/ test/``),
  the label is the integer before the first ``_`` of each file name;
- ``folders``: one sub-folder per class, inside split folders or directly in the root;
- ``csv``: a manifest ``path,label[,split]`` (``manifest.csv`` in the root, or the CSV file itself),
  in UTF-8; each file on one line, inside the manifest's folder unless ``allow_outside_root``. Its label
  may name several classes separated by ``|`` (``rice|egg``): a multi-label dataset (``TASKS``).

The task: ``single`` (one class an image: ``Sample.label`` is its id) or ``multi`` (several: ``Sample.label``
is the tuple of their ids, sorted); ``auto`` is multi when a manifest row names more than one class.

Each reader only lists files (nothing is decoded) and returns a ``Listing``. A listed image that
is not a readable file (a dangling or self-referencing link) is a ``Problem``, not a sample.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from headstart.config import TASKS  # auto, single, multi
from headstart.data.images import (
    IMAGE_EXTENSIONS,
    files_under,
    is_image_file,
    read_text,
    real_paths,
    unreadable,
    visible,
)
from headstart.data.manifest import check_inside, check_listed_once, manifest_rows
from headstart.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("training", "validation", "evaluation")
# Folder (and manifest) names accepted for each split: the tutorial's and the usual short ones.
SPLIT_ALIASES = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "evaluation": "evaluation",
    "test": "evaluation",
}
LAYOUTS = ("food11", "folders", "csv")
LABEL_SEPARATOR = "|"  # between the classes of one image in a manifest's label: rice|egg
# The class names of Food-11, in label order (ids 0-10), as the tutorial lists them.
FOOD11_CLASSES = (
    "Bread",
    "Dairy product",
    "Dessert",
    "Egg",
    "Fried food",
    "Meat",
    "Noodles/Pasta",
    "Rice",
    "Seafood",
    "Soup",
    "Vegetable/Fruit",
)
MANIFEST = "manifest.csv"
CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int | tuple[int, ...]  # the class id; in a multi-label dataset the tuple of its classes' ids
    split: str


def label_ids(label: int | tuple[int, ...]) -> tuple[int, ...]:
    """The class ids of a sample's label, one or several."""
    return label if isinstance(label, tuple) else (label,)


@dataclass(frozen=True)
class Problem:
    """A file that looked like an image but was skipped, and why."""

    path: Path
    reason: str


@dataclass
class Listing:
    """What a layout reader found: the samples, the files that are not images, the class names,
    where each split was read from, and listed images that are missing."""

    samples: list[Sample]
    ignored: list[Path]
    classes: list[str]
    sources: dict[str, Path]
    problems: list[Problem] = field(default_factory=list)
    layout: str = ""  # set by read_layout
    task: str = "single"  # or "multi": each label a tuple of class ids (read_layout)


def _split_folders(root: Path) -> dict[str, Path]:
    """The split folders in ``root``, by canonical split name."""
    found: dict[str, Path] = {}
    for entry in visible(root.iterdir()):
        split = SPLIT_ALIASES.get(entry.name.lower())
        if split is None or not entry.is_dir():
            continue
        if split in found:
            raise DataError(
                f"{root} has two folders for the {split} split: '{found[split].name}' and "
                f"'{entry.name}'. Keep one of them."
            )
        found[split] = entry
    return found


def _folder_kind(folder: Path) -> str:
    """'files' (images directly inside), 'classes' (images in sub-folders), 'mixed' or 'empty'."""
    entries = visible(folder.iterdir())
    has_files = any(p.is_file() and is_image_file(p) for p in entries)
    has_classes = any(p.is_dir() and any(is_image_file(f) for f in files_under(p)) for p in entries)
    return {(True, False): "files", (False, True): "classes", (True, True): "mixed"}.get(
        (has_files, has_classes), "empty"
    )


def _mixed(folder: Path) -> DataError:
    return DataError(
        f"{folder} holds both image files and class sub-folders with images: a mix of the "
        "'food11' layout (files named <class id>_<n>.jpg) and the 'folders' layout (one "
        "sub-folder per class). Move the loose files into class folders, or the reverse."
    )


def _is_manifest(path: Path) -> bool:
    """Whether a CSV's first row looks like a headstart manifest's: path,label[,split]."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        first = next((r for r in csv.reader(f) if r and any(c.strip() for c in r)), [])
    return len(first) in (2, 3)


def detect_layout(root: Path) -> str:
    """Which layout ``root`` is in: 'food11', 'folders' or 'csv' (see the module docstring)."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"DATA '{root}' is a file but not a CSV manifest. Pass a folder or a .csv file.")
    if (root / MANIFEST).is_file():
        if _is_manifest(root / MANIFEST):
            return "csv"
        log.warning(
            "%s is not a headstart manifest (rows of path,label[,split]): the folders decide the layout. "
            "Pass --layout csv to read it anyway.",
            root / MANIFEST,
        )
    splits = _split_folders(root)
    if not splits:
        kind = _folder_kind(root)
        if kind == "classes":
            return "folders"
        if kind == "mixed":
            raise _mixed(root)
        if kind == "files":
            raise DataError(
                f"{root} holds images but no split folders and no class folders. Put them in "
                "training/ validation/ evaluation/ named <class id>_<n>.jpg (food11), in one "
                f"sub-folder per class (folders), or list them in {MANIFEST} (csv)."
            )
        raise DataError(
            f"No images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}). Check the path."
        )
    stray = [
        p
        for p in visible(root.iterdir())
        if p.is_dir() and p not in splits.values() and any(is_image_file(f) for f in files_under(p))
    ]
    if stray:
        raise DataError(
            f"{root} holds split folders ({', '.join(p.name for p in splits.values())}) and also "
            f"other folders with images ({', '.join(p.name for p in stray)}): a mix of layouts. "
            "Move those folders into a split folder, or remove them."
        )
    kinds = {split: _folder_kind(folder) for split, folder in splits.items()}
    for split, kind in kinds.items():
        if kind == "mixed":
            raise _mixed(splits[split])
    used = {kind for kind in kinds.values() if kind != "empty"}
    if used == {"files"}:
        return "food11"
    if used == {"classes"}:
        return "folders"
    if not used:
        raise DataError(f"The split folders in {root} hold no images. Check the path.")
    by_kind = {k: [splits[s].name for s in kinds if kinds[s] == k] for k in ("files", "classes")}
    raise DataError(
        f"{root} mixes layouts: {', '.join(by_kind['files'])} hold loose image files (food11) "
        f"but {', '.join(by_kind['classes'])} hold class sub-folders (folders). Use one layout "
        "in every split folder."
    )


# --- class names --------------------------------------------------------------------------


def read_classes_file(path: Path) -> list[str] | None:
    """Class names from ``classes.txt`` (line i is the name of class id i), if the file exists."""
    if not path.is_file():
        return None
    names = [line.strip() for line in read_text(path).splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DataError(f"{path} names a class more than once: {', '.join(dupes)}. Each line must be a new name.")
    if not names:
        raise DataError(f"{path} is empty. Write one class name a line, or delete the file.")
    return names


def _names_for_ids(
    ids: set[int], classes_file: Path, default: tuple[str, ...] | None, where: dict[int, Path]
) -> list[str]:
    """Class names for integer labels: from classes.txt, else ``default``; every id needs one."""
    names = read_classes_file(classes_file)
    if names is not None:
        source = f"{classes_file} has {len(names)} names"
    elif default is not None:
        names = list(default[: max(ids, default=-1) + 1])
        source = f"there is no {classes_file} and the default names cover ids 0-{len(default) - 1}"
    else:
        names, source = [], f"there is no {classes_file}"
    missing = sorted(i for i in ids if i >= len(names))
    if missing:
        raise DataError(
            f"Label id {missing[0]} (in {where[missing[0]]}) has no class name: {source}. "
            f"Write one class name a line in {classes_file}, line i naming class id i."
        )
    return names or []


def _names_for_labels(labels: set[str], classes_file: Path, what: str) -> list[str]:
    """Class names for named labels (folder names, CSV names): sorted, or classes.txt's order."""
    names = read_classes_file(classes_file)
    if names is None:
        return sorted(labels)
    unknown = sorted(labels - set(names))
    if unknown:
        raise DataError(
            f"{what} '{unknown[0]}' is not listed in {classes_file}. Add it there, or "
            "delete classes.txt to use the names as they are (sorted)."
        )
    return names


# --- the three layouts --------------------------------------------------------------------


def _is_id(text: str) -> bool:
    """Whether ``text`` is a class id: ASCII digits (``int`` refuses some other digits, like ``²``)."""
    return text.isascii() and text.isdigit()


def _food11_label(path: Path) -> int | None:
    head = path.name.split("_", 1)[0]
    return int(head) if _is_id(head) and "_" in path.name else None


def _read_food11(root: Path) -> Listing:
    splits = _split_folders(root)
    samples, ignored, unlabelled, problems = [], [], [], []
    where: dict[int, Path] = {}
    for split, folder in splits.items():
        for path in visible(folder.iterdir()):
            if path.is_dir():
                continue
            if not is_image_file(path):
                ignored.append(path)
                continue
            reason = unreadable(path)  # a dangling or self-referencing link
            if reason:
                problems.append(Problem(path, reason))
                continue
            label = _food11_label(path)
            if label is None:
                unlabelled.append(path)
                continue
            where.setdefault(label, path)
            samples.append(Sample(path, label, split))
    if unlabelled:
        examples = ", ".join(str(p) for p in unlabelled[:3])
        raise DataError(
            f"{len(unlabelled)} file(s) have no class id in their name, e.g. {examples}. The "
            "food11 layout names files <class id>_<n>.jpg (9_1339.jpg is class 9): rename "
            "them, or use --layout folders / csv."
        )
    classes = _names_for_ids({s.label for s in samples}, root / CLASSES_FILE, FOOD11_CLASSES, where)
    return Listing(samples, ignored, classes, splits, problems)


def _read_folders(root: Path) -> Listing:
    splits = _split_folders(root) or {"training": root}
    found: list[tuple[Path, str, str]] = []  # (path, class folder, split)
    ignored, problems = [], []
    for split, folder in splits.items():
        for class_dir in visible(folder.iterdir()):
            if not class_dir.is_dir():
                # Loose files in a split folder are not images of any class; in the root
                # they are the dataset's own files (classes.txt, a README) and not counted.
                if class_dir.is_file() and folder != root:
                    ignored.append(class_dir)
                continue
            for path in files_under(class_dir):
                if not is_image_file(path):
                    ignored.append(path)
                elif reason := unreadable(path):  # a dangling or self-referencing link
                    problems.append(Problem(path, reason))
                else:
                    found.append((path, class_dir.name, split))
    classes = _names_for_labels({name for _, name, _ in found}, root / CLASSES_FILE, "Class folder")
    index = {name: i for i, name in enumerate(classes)}
    return Listing([Sample(p, index[name], split) for p, name, split in found], ignored, classes, splits, problems)


def _label_names(manifest: Path, n: int, text: str) -> list[str]:
    """The classes a manifest's label names: one, or several separated by ``|``, none of them empty."""
    names = [part.strip() for part in text.split(LABEL_SEPARATOR)]
    if not all(names):
        raise DataError(
            f"{manifest}, line {n}: an empty label in {text!r}. Separate an image's classes with one "
            f"'{LABEL_SEPARATOR}' and no empty name between them (rice|egg)."
        )
    return list(dict.fromkeys(names))


def _task_of(manifest: Path, task: str, names: list[tuple[int, list[str]]]) -> str:
    """single or multi: ``task``, or (auto) multi where some row names more than one class."""
    several = next(((n, x) for n, x in names if len(x) > 1), None)
    if task == "single" and several:
        n, x = several
        raise DataError(
            f"{manifest}, line {n}: {len(x)} labels ({LABEL_SEPARATOR.join(x)}) with --task single. Pass "
            "--task multi (or auto) to train one output per class, or give each image one label."
        )
    return "multi" if task == "multi" or (task == "auto" and several) else "single"


def _read_csv(manifest: Path, allow_outside_root: bool = False, task: str = "auto") -> Listing:
    base = manifest.parent
    rows = manifest_rows(manifest)
    if not rows:
        raise DataError(f"{manifest} lists no images. Write one row a line: path,label[,split].")
    entries = []  # (line number, path, label text, split or None)
    for n, row in rows:
        if len(row) not in (2, 3) or not row[0].strip() or not row[1].strip():
            raise DataError(f"{manifest}, line {n}: expected path,label[,split], got {','.join(row)!r}.")
        split = None
        if len(row) == 3 and row[2].strip():
            split = SPLIT_ALIASES.get(row[2].strip().lower())
            if split is None:
                raise DataError(
                    f"{manifest}, line {n}: unknown split '{row[2].strip()}'. Use one of "
                    f"{', '.join(sorted(SPLIT_ALIASES))}, or leave it empty to draw splits."
                )
        entries.append((n, Path(row[0].strip()), row[1].strip(), split))
    with_split = {e[3] is not None for e in entries}
    if len(with_split) == 2:
        raise DataError(
            f"{manifest} gives a split for some rows and not for others. Give every row a split, "
            "or none (then validation and evaluation are drawn from the rows)."
        )
    paths = [rel if rel.is_absolute() else base / rel for _, rel, _, _ in entries]
    reals = real_paths(paths)
    if not allow_outside_root:
        check_inside(manifest, entries, paths, reals)
    check_listed_once(manifest, entries, reals)
    named = [(n, _label_names(manifest, n, text)) for n, _, text, _ in entries]
    multi = _task_of(manifest, task, named) == "multi"
    labels = {x for _, names in named for x in names}
    if all(_is_id(label) for label in labels):
        where = {}
        for n, names in named:
            for label in names:
                if len(label) > 18:  # int() of thousands of digits is refused; no classes.txt is that long
                    raise DataError(
                        f"{manifest}, line {n}: label id {label[:24]}... has no class name. Number "
                        f"the classes 0, 1, 2... and name them in {base / CLASSES_FILE}."
                    )
                where.setdefault(int(label), Path(f"{manifest}, line {n}"))
        classes = _names_for_ids({int(x) for x in labels}, base / CLASSES_FILE, None, where)
        index = {x: int(x) for x in labels}
    else:
        classes = _names_for_labels(labels, base / CLASSES_FILE, f"Label in {manifest}")
        index = {name: i for i, name in enumerate(classes)}
    ids = [tuple(sorted(index[x] for x in names)) if multi else index[names[0]] for _, names in named]
    samples, ignored, problems = [], [], []
    for (n, _, _, split), path, label in zip(entries, paths, ids):
        if not is_image_file(path):
            ignored.append(path)
        elif not os.path.lexists(path):
            problems.append(Problem(path, f"listed in {manifest.name}, line {n}, but not found"))
        elif reason := unreadable(path):  # a dangling or self-referencing link, a folder
            problems.append(Problem(path, f"listed in {manifest.name}, line {n}, but {reason}"))
        else:
            samples.append(Sample(path, label, split or "training"))
    return Listing(samples, ignored, classes, {"training": manifest}, problems, task="multi" if multi else "single")


def read_layout(
    root: Path, layout: str | None = None, *, allow_outside_root: bool = False, task: str = "auto"
) -> Listing:
    """List the dataset at ``root`` in ``layout`` (detected when None). ``root`` of a csv
    listing is the folder holding the manifest; its paths stay inside it unless ``allow_outside_root``.
    ``task``: single, multi, or auto (multi when a manifest row names several classes; the module docstring)."""
    if task not in TASKS:
        raise DataError(f"Unknown task '{task}'. Choose one of: {', '.join(TASKS)}.")
    try:
        if layout is None:
            layout = detect_layout(root)
        elif layout not in LAYOUTS:
            raise DataError(f"Unknown layout '{layout}'. Choose one of: {', '.join(LAYOUTS)}.")
        if layout == "csv":
            manifest = root if root.is_file() else root / MANIFEST
            if not manifest.is_file():
                raise DataError(f"--layout csv needs a manifest: {manifest} does not exist.")
            listing = _read_csv(manifest, allow_outside_root, task)
        elif root.is_file():
            raise DataError(f"--layout {layout} needs a folder; received the file {root}.")
        else:
            listing = _read_food11(root) if layout == "food11" else _read_folders(root)
    except OSError as e:  # a folder that cannot be listed, a name the system refuses
        raise DataError(
            f"Cannot read {e.filename or root}: {e.strerror or e}. Check that it exists and that you may read it."
        ) from None
    listing.layout = layout
    if task == "multi" and listing.task == "single":  # one class an image, each an output of its own
        listing.samples = [Sample(s.path, label_ids(s.label), s.split) for s in listing.samples]
        listing.task = "multi"
    return listing
