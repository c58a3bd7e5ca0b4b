"""Reading image datasets: layouts, class names, decoding, and what is wrong with them.

The tutorial reads Food-11 by listing ``training/ validation/ evaluation/`` and taking the label
from the file name (``9_1339.jpg`` is class 9). headstart reads that layout and two more, and
checks every image once so that a broken file is reported instead of crashing a run:

>>> ds = load_dataset("demo")                       # scan the files (fast, nothing decoded)
>>> ds, images = verify_images(ds)                  # decode each image once, drop broken ones
>>> summary = summarize(ds, images)
>>> summary.counts["training"][:3]
[100, 100, 100]

Layouts (detected automatically, or forced with ``layout=``):

- ``food11``: split folders ``training/ validation/ evaluation/`` (or ``train/ val|valid/ test/``),
  the label is the integer before the first ``_`` of each file name;
- ``folders``: one sub-folder per class, inside split folders or directly in the root;
- ``csv``: a manifest ``path,label[,split]`` (``manifest.csv`` in the root, or the CSV file itself).

Splits that the data does not have (all of them but training for a single folder of class
folders, say) are drawn from the training images, stratified by class and seeded.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from headstart._files import write_text

log = logging.getLogger(__name__)

SPLITS = ("training", "validation", "evaluation")
# Folder (and manifest) names accepted for each split: the tutorial's and the usual short ones.
SPLIT_ALIASES = {
    "training": "training", "train": "training",
    "validation": "validation", "val": "validation", "valid": "validation",
    "evaluation": "evaluation", "test": "evaluation",
}
LAYOUTS = ("food11", "folders", "csv")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# The class names of Food-11, in label order (ids 0-10), as the tutorial lists them.
FOOD11_CLASSES = (
    "Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
    "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit",
)
# Pillow's own decompression-bomb threshold (1024 * 1024 * 1024 // 4 // 3 pixels, ~0.25 GB of
# RGB): far above any photo a classifier is trained on, far below what exhausts memory.
MAX_PIXELS = 89_478_485
MANIFEST = "manifest.csv"
CLASSES_FILE = "classes.txt"
DEMO = "demo"


class DataError(ValueError):
    """A dataset that cannot be used as it is. The message names the path and the fix."""


class ImageError(ValueError):
    """One image that cannot be decoded; the message is the reason. ``kind``: "unreadable"
    (missing, empty, broken), "not_image" (no format Pillow knows) or "too_large" (pixel limit)."""

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    split: str


@dataclass(frozen=True)
class Problem:
    """A file that looked like an image but was skipped, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ImageInfo:
    """What an image was before it became 8-bit RGB (size after EXIF orientation)."""

    path: Path
    width: int
    height: int
    mode: str
    format: str


@dataclass
class Dataset:
    """The images of a dataset, their labels and splits, and the files that were left out."""

    root: Path
    layout: str
    classes: list[str]
    samples: list[Sample]
    ignored: list[Path] = field(default_factory=list)  # files that are not images
    problems: list[Problem] = field(default_factory=list)  # images that could not be read
    drawn: tuple[str, ...] = ()  # splits drawn from training because the data had none
    sources: dict[str, Path] = field(default_factory=dict)  # where each split was read from

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, list[int]]:
        """Images per class in each split: ``{"training": [994, 429, ...], ...}``."""
        out = {}
        for split in SPLITS:
            c = Counter(s.label for s in self.samples if s.split == split)
            out[split] = [c[i] for i in range(self.num_classes)]
        return out


# --- finding the data ---------------------------------------------------------------------


def demo_root() -> Path:
    """The embedded demo dataset: a Fashion-MNIST subset in the Food-11 layout."""
    return Path(str(resources.files("headstart") / "demo_data"))


def resolve_data(data: str | os.PathLike) -> Path:
    """The path behind DATA: the word ``demo`` means the embedded demo dataset."""
    if str(data) == DEMO:
        return demo_root()
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(
            f"DATA '{data}' does not exist. Pass a dataset folder, a CSV manifest, "
            f"or the word '{DEMO}' for the embedded demo dataset."
        )
    return path.resolve()


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _visible(entries) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def files_under(folder: Path) -> list[Path]:
    """Every visible file below ``folder``, sorted (hidden files and folders are skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out)


def _split_folders(root: Path) -> dict[str, Path]:
    """The split folders in ``root``, by canonical split name."""
    found: dict[str, Path] = {}
    for entry in _visible(root.iterdir()):
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
    entries = _visible(folder.iterdir())
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


def detect_layout(root: Path) -> str:
    """Which layout ``root`` is in: 'food11', 'folders' or 'csv' (see the module docstring)."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"DATA '{root}' is a file but not a CSV manifest. Pass a folder or a .csv file.")
    if (root / MANIFEST).is_file():
        return "csv"
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
            f"No images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}). "
            "Check the path."
        )
    stray = [p for p in _visible(root.iterdir()) if p.is_dir() and p not in splits.values()
             and any(is_image_file(f) for f in files_under(p))]
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
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        dupes = sorted(n for n, c in Counter(names).items() if c > 1)
        raise DataError(f"{path} names a class more than once: {', '.join(dupes)}. Each line must be a new name.")
    if not names:
        raise DataError(f"{path} is empty. Write one class name a line, or delete the file.")
    return names


def _names_for_ids(ids: set[int], classes_file: Path, default: tuple[str, ...] | None,
                   where: dict[int, Path]) -> list[str]:
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


def _food11_label(path: Path) -> int | None:
    head = path.name.split("_", 1)[0]
    return int(head) if head.isdigit() and "_" in path.name else None


def _read_food11(root: Path) -> tuple[list[Sample], list[Path], list[str], dict[str, Path]]:
    splits = _split_folders(root)
    samples, ignored, unlabelled = [], [], []
    where: dict[int, Path] = {}
    for split, folder in splits.items():
        for path in _visible(folder.iterdir()):
            if not path.is_file():
                continue
            if not is_image_file(path):
                ignored.append(path)
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
    return samples, ignored, classes, splits


def _read_folders(root: Path) -> tuple[list[Sample], list[Path], list[str], dict[str, Path]]:
    splits = _split_folders(root) or {"training": root}
    found: list[tuple[Path, str, str]] = []  # (path, class folder, split)
    ignored = []
    for split, folder in splits.items():
        for class_dir in _visible(folder.iterdir()):
            if not class_dir.is_dir():
                # Loose files in a split folder are not images of any class; in the root
                # they are the dataset's own files (classes.txt, a README) and not counted.
                if class_dir.is_file() and folder != root:
                    ignored.append(class_dir)
                continue
            for path in files_under(class_dir):
                if is_image_file(path):
                    found.append((path, class_dir.name, split))
                else:
                    ignored.append(path)
    classes = _names_for_labels({name for _, name, _ in found}, root / CLASSES_FILE, "Class folder")
    index = {name: i for i, name in enumerate(classes)}
    return [Sample(p, index[name], split) for p, name, split in found], ignored, classes, splits


def _read_csv(manifest: Path) -> tuple[list[Sample], list[Path], list[str], dict[str, Path], list[Problem]]:
    base = manifest.parent
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{manifest} lists no images. Write one row a line: path,label[,split].")
    entries = []  # (line number, path, label text, split or None)
    for n, row in enumerate(rows, start=1):
        if len(row) not in (2, 3) or not row[0].strip() or not row[1].strip():
            raise DataError(f"{manifest}, row {n}: expected path,label[,split], got {','.join(row)!r}.")
        split = None
        if len(row) == 3 and row[2].strip():
            split = SPLIT_ALIASES.get(row[2].strip().lower())
            if split is None:
                raise DataError(
                    f"{manifest}, row {n}: unknown split '{row[2].strip()}'. Use one of "
                    f"{', '.join(sorted(SPLIT_ALIASES))}, or leave it empty to draw splits."
                )
        entries.append((n, Path(row[0].strip()), row[1].strip(), split))
    with_split = {e[3] is not None for e in entries}
    if len(with_split) == 2:
        raise DataError(
            f"{manifest} gives a split for some rows and not for others. Give every row a split, "
            "or none (then validation and evaluation are drawn from the rows)."
        )
    labels = [e[2] for e in entries]
    if all(label.isdigit() for label in labels):
        where = {}
        for n, _, label, _ in entries:
            where.setdefault(int(label), Path(f"{manifest}, row {n}"))
        classes = _names_for_ids({int(x) for x in labels}, base / CLASSES_FILE, None, where)
        ids = [int(x) for x in labels]
    else:
        classes = _names_for_labels(set(labels), base / CLASSES_FILE, f"Label in {manifest}")
        index = {name: i for i, name in enumerate(classes)}
        ids = [index[x] for x in labels]
    samples, ignored, problems = [], [], []
    for (n, rel, _, split), label in zip(entries, ids):
        path = rel if rel.is_absolute() else base / rel
        if not is_image_file(path):
            ignored.append(path)
        elif not path.is_file():
            problems.append(Problem(path, f"listed in {manifest.name}, row {n}, but not found"))
        else:
            samples.append(Sample(path, label, split or "training"))
    return samples, ignored, classes, {"training": manifest}, problems


# --- splits -------------------------------------------------------------------------------


def _draw_splits(samples: list[Sample], fractions: dict[str, float], seed: int) -> list[Sample]:
    """Move a fraction of every class's training images to each split in ``fractions``."""
    rng = np.random.default_rng(seed)
    out = [s for s in samples if s.split != "training"]
    for label in sorted({s.label for s in samples if s.split == "training"}):
        pool = [s for s in samples if s.split == "training" and s.label == label]
        order = rng.permutation(len(pool))
        start = 0
        for split, fraction in fractions.items():
            # At least one image of the class stays in training; rounding decides the rest.
            take = min(round(len(pool) * fraction), len(pool) - 1 - start)
            out += [Sample(pool[i].path, label, split) for i in order[start:start + max(take, 0)]]
            start += max(take, 0)
        out += [pool[i] for i in order[start:]]
    return sorted(out, key=lambda s: (SPLITS.index(s.split), str(s.path)))


def check_splits(ds: Dataset) -> None:
    """Every split has images and every class has training images, or a DataError."""
    counts = ds.counts()
    for split in SPLITS:
        if sum(counts[split]) == 0:
            where = ds.sources.get(split, ds.root)
            raise DataError(
                f"The {split} split is empty: no usable images in {where}. Add images there"
                + (", or remove the folder to draw it from training." if split != "training" else ".")
            )
    empty = [i for i, n in enumerate(counts["training"]) if n == 0]
    if empty:
        i = empty[0]
        names_from = ds.root / CLASSES_FILE if (ds.root / CLASSES_FILE).exists() else "the data"
        raise DataError(
            f"Class {i} '{ds.classes[i]}' has no training images in {ds.sources.get('training', ds.root)}. "
            f"Add some, or remove the class from {names_from}."
        )


def load_dataset(
    data: str | os.PathLike,
    layout: str | None = None,
    *,
    val_fraction: float = 0.2,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Scan a dataset (no image is decoded): its layout, classes, splits and ignored files.

    ``val_fraction``/``eval_fraction`` (default 0.2 each, close to the tutorial's Food-11
    split of 59/21/20 %) are used only for splits the data does not have.

    >>> ds = load_dataset("demo")
    >>> ds.layout, ds.num_classes, len(ds.split("evaluation"))
    ('food11', 10, 300)
    """
    root = resolve_data(data)
    if layout is None:
        layout = detect_layout(root)
    elif layout not in LAYOUTS:
        raise DataError(f"Unknown layout '{layout}'. Choose one of: {', '.join(LAYOUTS)}.")
    for name, value in (("val_fraction", val_fraction), ("eval_fraction", eval_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"{name} must be in [0, 1); received {name}={value}.")
    if val_fraction + eval_fraction >= 1:
        raise DataError(
            f"val_fraction + eval_fraction must leave images for training; received "
            f"{val_fraction} + {eval_fraction}."
        )

    problems: list[Problem] = []
    if layout == "csv":
        manifest = root if root.is_file() else root / MANIFEST
        if not manifest.is_file():
            raise DataError(f"--layout csv needs a manifest: {manifest} does not exist.")
        samples, ignored, classes, sources, problems = _read_csv(manifest)
        root = manifest.parent
    elif root.is_file():
        raise DataError(f"--layout {layout} needs a folder; received the file {root}.")
    elif layout == "food11":
        samples, ignored, classes, sources = _read_food11(root)
    else:
        samples, ignored, classes, sources = _read_folders(root)

    if not any(s.split == "training" for s in samples) and not problems:
        raise DataError(
            f"No training images found in {sources.get('training', root)} (layout {layout}). "
            "Check the path and the layout."
        )
    # A split with a folder of its own is never drawn, even when the folder is empty (an error).
    present = set(sources) | {s.split for s in samples}
    wanted = {"validation": val_fraction, "evaluation": eval_fraction}
    drawn = {split: f for split, f in wanted.items() if split not in present}
    if drawn:
        samples = _draw_splits(samples, drawn, seed)
    ds = Dataset(root, layout, classes, samples, ignored, problems, tuple(drawn), sources)
    check_splits(ds)
    return ds


# --- decoding -----------------------------------------------------------------------------


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I"):
        # 16-bit greyscale (PNG, TIFF) opens as I;16 or I: scale 0..65535 to 0..255.
        arr = np.asarray(im, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":  # floating-point TIFF: [0, 1] or already 0..255
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if arr.max() <= 1.0 else arr
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(path: Path, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror or e}") from None
    if empty:
        raise ImageError("empty file (0 bytes)")
    return _decode(path, path, max_pixels)


def decode_bytes(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "upload") -> Image.Image:
    """``decode_image`` for the bytes of an image file (an upload): the same checks and conversions."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), Path(name), max_pixels)[0]


def _decode(source, path: Path, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow still raises for more than twice its own.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} "
                        "(a decompression bomb?); raise max_pixels if the image is genuine", "too_large"
                    )
                im.load()  # the first frame of a GIF or TIFF; reads every byte, so truncation shows
                mode, fmt = im.mode, im.format or path.suffix.lstrip(".").upper()
                rgb = to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused as a decompression bomb: {e}", "too_large") from None
    except UnidentifiedImageError:
        raise ImageError("cannot decode: not an image Pillow recognises (bad or missing header)", "not_image") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise ImageError(f"cannot decode: {e}") from None
    return rgb, ImageInfo(path, rgb.width, rgb.height, mode, fmt)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file to 8-bit RGB with its EXIF orientation applied.

    Greyscale, palette, CMYK and 16-bit images are converted; transparency is composited on
    white; a GIF or multi-page TIFF gives its first frame. Raises ImageError with the reason.
    """
    return decode_image(Path(path), max_pixels)[0]


def verify_images(
    ds: Dataset, *, max_pixels: int = MAX_PIXELS, progress: bool = True, workers: int | None = None
) -> tuple[Dataset, list[ImageInfo]]:
    """Decode every image once; return the dataset without the broken ones, and what each was.

    Broken images (corrupt, truncated, empty, over ``max_pixels``) are dropped, added to
    ``problems`` with their reason, and logged as a warning; the splits are checked again.
    """
    from rich.progress import track

    def check(sample: Sample) -> ImageInfo | Problem:
        try:
            return decode_image(sample.path, max_pixels)[1]
        except ImageError as e:
            return Problem(sample.path, str(e))

    # Pillow releases the GIL while decoding, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(track(pool.map(check, ds.samples), total=len(ds.samples),
                             description="Checking images", disable=not progress, transient=True))
    bad = [r for r in results if isinstance(r, Problem)]
    for p in bad:
        log.warning("skipping %s: %s", p.path, p.reason)
    keep = [s for s, r in zip(ds.samples, results) if isinstance(r, ImageInfo)]
    clean = Dataset(ds.root, ds.layout, ds.classes, keep, ds.ignored, ds.problems + bad, ds.drawn, ds.sources)
    check_splits(clean)
    return clean, [r for r in results if isinstance(r, ImageInfo)]


# --- summary ------------------------------------------------------------------------------


@dataclass
class Summary:
    """What ``headstart inspect`` reports about a dataset."""

    root: str
    layout: str
    classes: list[str]
    counts: dict[str, list[int]]
    imbalance: float  # largest / smallest training class
    sizes: dict[str, dict[str, int]]  # {"width": {"min", "median", "max"}, "height": ...}
    distinct_sizes: int
    modes: dict[str, int]  # original colour modes (RGB, L, CMYK, ...) and how many of each
    formats: dict[str, int]
    drawn: list[str]
    problems: list[dict[str, str]]
    ignored: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(ds: Dataset, images: list[ImageInfo]) -> Summary:
    """Counts per split and class, imbalance, image sizes and the problems found."""
    counts = ds.counts()
    train = counts["training"]
    widths = np.array([i.width for i in images] or [0])
    heights = np.array([i.height for i in images] or [0])

    def stats(a: np.ndarray) -> dict[str, int]:
        return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())}

    return Summary(
        root=str(ds.root),
        layout=ds.layout,
        classes=list(ds.classes),
        counts=counts,
        imbalance=round(max(train) / max(min(train), 1), 2),
        sizes={"width": stats(widths), "height": stats(heights)},
        distinct_sizes=len({(i.width, i.height) for i in images}),
        modes=dict(Counter(i.mode for i in images).most_common()),
        formats=dict(Counter(i.format for i in images).most_common()),
        drawn=list(ds.drawn),
        problems=[{"path": str(p.path), "reason": p.reason} for p in ds.problems],
        ignored=[str(p) for p in ds.ignored],
    )


# --- inspect: all of the above, plus pictures ---------------------------------------------

DISTRIBUTION_PNG = "class_distribution.png"
SAMPLES_PNG = "samples.png"
SUMMARY_JSON = "inspect.json"


def inspect_dataset(
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    layout: str | None = None,
    val_fraction: float = 0.2,
    eval_fraction: float = 0.2,
    seed: int = 0,
    max_pixels: int = MAX_PIXELS,
    progress: bool = True,
) -> Summary:
    """Scan and check a dataset; with ``out``, write the class distribution, samples and JSON.

    Nothing is written unless the whole dataset could be read: a DataError comes first.

    >>> summary = inspect_dataset("demo", "runs/inspect-demo")
    >>> summary.imbalance
    1.0
    """
    from headstart import plots  # matplotlib loads only when pictures are drawn

    ds = load_dataset(data, layout, val_fraction=val_fraction, eval_fraction=eval_fraction, seed=seed)
    ds, images = verify_images(ds, max_pixels=max_pixels, progress=progress)
    summary = summarize(ds, images)
    if out is not None:
        out = Path(out)
        train = ds.split("training")
        # A seeded random 4x4 pick: sorted file order would show only the first class.
        picks = [train[i] for i in np.random.default_rng(seed).permutation(len(train))[:16]]
        plots.plot_class_distribution(summary.counts, ds.classes, out / DISTRIBUTION_PNG)
        plots.plot_samples([load_image(s.path, max_pixels) for s in picks],
                           [ds.classes[s.label] for s in picks], out / SAMPLES_PNG)
        write_text(out / SUMMARY_JSON, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
