"""Properties over generated data: whatever the files, names, manifests or bytes, reading them ends in
a dataset or in a HeadstartError (a message, exit code 2), never in another exception; and a loaded
dataset never holds one file twice, so never one file in two splits.

Each example builds its files in a fresh folder: hypothesis runs every example inside one test
call, so pytest's function-scoped ``tmp_path`` would be shared by all of them.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from headstart.data.cache import decoded_images
from headstart.data.dataset import load_dataset
from headstart.data.images import MAX_PIXELS, decode_bytes, decode_image
from headstart.data.inspection import verify_images
from headstart.data.layouts import SPLITS
from headstart.data.preprocessing import Preprocessing
from headstart.errors import HeadstartError, ImageError
from helpers.datasets import photo

FEW = settings(max_examples=40, deadline=None, database=None)  # the whole file runs in seconds
PRE = Preprocessing(input_size=16)


def _encoded(fmt: str, i: int = 0) -> bytes:
    buffer = io.BytesIO()
    photo(i, (24, 20)).save(buffer, fmt)
    return buffer.getvalue()


IMAGES = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")}
PHOTOS = [_encoded("JPEG", i) for i in range(8)]  # different images: a file's bytes are never another's


@contextmanager
def fresh_folder(factory):
    folder = Path(tempfile.mkdtemp(dir=factory.getbasetemp()))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def loaded(data: Path, **options):
    """``load_dataset(data, **options)``, or None after a HeadstartError (any other exception fails
    the test); a dataset that loads holds every file once, so no file in two splits."""
    try:
        ds = load_dataset(data, **options)
    except HeadstartError:
        event("refused")
        return None
    event("loaded")
    files = [os.path.realpath(s.path) for s in ds.samples]
    in_split = {split: {f for f, s in zip(files, ds.samples) if s.split == split} for split in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not in_split[a] & in_split[b], f"in {a} and {b}: {sorted(in_split[a] & in_split[b])}"
    assert len(set(files)) == len(files), "a file listed twice"
    return ds


def decoded(ds, cache: Path) -> None:
    """What inspect and train do next: decode every image (directly, and through the cache)."""
    for step in (
        lambda: verify_images(ds, progress=False, workers=2),
        lambda: decoded_images(ds, PRE, progress=False, directory=cache),
    ):
        try:
            step()
        except HeadstartError:
            pass


# --- layouts: any file names, contents and links in folders -----------------------------------

# Names: any text a file name can hold (no "/" or NUL, no lone surrogate), and some chosen odd ones.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=10)
ODD = st.sampled_from(
    [
        "a b",
        "caf\u00e9",
        "\u65e5\u672c",
        "a,b",
        'q"uote',
        "new\nline",
        " ",
        "-",
        "\ufb01",
        "\u00b2",
        "\u0663",
        "#",
        "\t",
        "\ufeffx",
        "path",
        "label",
    ]
)
NAME = st.one_of(TEXT, ODD).filter(lambda n: n not in (".", ".."))
# Where a file goes: mostly the split folders (and, in the folders layout, a class folder) of the
# usable dataset built on, sometimes anywhere: a split folder's other name, the root, a new folder.
TAME = st.tuples(st.sampled_from(SPLITS), st.just("as the base"))
WILD = st.tuples(
    st.sampled_from([*SPLITS, "train", "val", "test", "Training", "", "misc"]),
    st.one_of(st.none(), st.sampled_from(["cat", "dog"]), NAME),
)
PLACE = st.one_of(TAME, TAME, TAME, WILD)
PREFIX = st.sampled_from(["0_", "1_"] * 4 + ["2_", "12_", "01_", "\u00b2_", "\u0663_", "x_", ""])  # ², ٣: isdigit()
EXT = st.sampled_from([".jpg", ".JPG", ".png", ".jpeg", ".webp", ".txt", ""])
KIND = st.sampled_from(["photo", "png", "random", "empty", "truncated", "link", "loop", "dangling"])
ENTRY = st.tuples(PLACE, PREFIX, NAME, EXT, KIND, st.binary(max_size=48), st.integers(0, 99))


def build(root: Path, entries) -> None:
    """Write each entry: ``folder[/class]/<prefix><name><ext>``, a photo, other bytes or a link."""
    made: list[Path] = []
    for (folder, cls), prefix, name, ext, kind, blob, n in entries:
        where = root / folder / cls if cls else root / folder
        path = where / f"{prefix}{name}{ext}"
        try:
            where.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "link" and made:  # to another file of the dataset, absolute or relative
                target = made[n % len(made)]
                os.symlink(target if n % 2 else os.path.relpath(target, where), path)
            elif kind in ("loop", "dangling"):
                os.symlink(path.name if kind == "loop" else "nowhere.jpg", path)
            else:
                data = {
                    "photo": PHOTOS[n % len(PHOTOS)],
                    "png": IMAGES["PNG"],
                    "random": blob,
                    "empty": b"",
                    "truncated": PHOTOS[0][: len(blob) * 8],
                }.get(kind, PHOTOS[n % len(PHOTOS)])
                path.write_bytes(data)
        except OSError:  # a class folder named like a file made before, say
            continue
        made.append(path)


def _entries(cls, *names_and_kinds):
    return [((folder, cls), "", name, ".jpg", kind, b"", n) for n, (folder, name, kind) in enumerate(names_and_kinds)]


# A usable dataset to start from, so that the generated files land among usable ones.
VALID = [
    (split, f"{c}_{i}", "photo")
    for split, n in (("training", 2), ("validation", 1), ("evaluation", 1))
    for c in (0, 1)
    for i in range(n)
]
BASES = {
    "none": [],
    "food11": _entries(None, *VALID),
    "folders": [
        e for i, c in enumerate(("cat", "dog")) for e in _entries(c, *(v for v in VALID if v[1].startswith(f"{i}_")))
    ],
}


@FEW
@given(
    base=st.sampled_from(sorted(BASES)),
    entries=st.lists(ENTRY, max_size=8),
    layout=st.sampled_from([None] * 4 + ["food11", "folders"]),
)
@example(base="food11", entries=_entries(None, ("evaluation", "0_e", "link")), layout=None)  # to a training image
@example(base="food11", entries=_entries(None, ("training", "\u00b2_x", "photo")), layout=None)  # int("²") fails
@example(base="folders", entries=_entries("cat", ("training", "x", "loop")), layout=None)  # the cache key stat()ed it
def test_any_files_in_folders_are_read_or_refused(tmp_path_factory, base, entries, layout):
    with fresh_folder(tmp_path_factory) as folder:
        cls = {"food11": None}.get(base, "cat")
        build(
            folder / "data",
            BASES[base]
            + [((place[0], cls if place[1] == "as the base" else place[1]), *rest) for place, *rest in entries],
        )
        ds = loaded(folder / "data", layout=layout)
        if ds is not None:
            decoded(ds, folder / "cache")


# --- manifests: any rows, encodings, repeats, paths ------------------------------------------

FILES = [f"img/{i}.jpg" for i in range(6)]
PATHS = st.one_of(
    st.sampled_from(FILES),
    st.sampled_from(
        [
            "./img/0.jpg",
            "img/../img/1.jpg",
            "img//2.jpg",
            " img/3.jpg ",
            "img/bad.jpg",
            "img/link.jpg",
            "img/loop.jpg",
            "img/dangling.jpg",
            "img/notes.txt",
            "missing.jpg",
            "img",
            "../outside.jpg",
            "../data/img/4.jpg",
            "{outside}",
            "{inside}",
        ]
    ),
    NAME,
)
LABELS = st.one_of(
    st.sampled_from(["cat", "dog", "0", "1", "2", "01", "\u00b2", " cat", "Cat"]),
    NAME.filter(lambda t: t.strip().lower() not in ("path", "label")),
)
SPLIT = st.sampled_from([None, "", "training", "train", "validation", "val", "evaluation", "test", "TEST", "holdout"])
AS_THE_OTHERS = st.just("as the others")
ROW = st.tuples(PATHS, LABELS, st.one_of(AS_THE_OTHERS, AS_THE_OTHERS, AS_THE_OTHERS, SPLIT))
# Usable manifests to start from: splits drawn, or given.
LABELLED = [(f, "cat" if i < 3 else "dog") for i, f in enumerate(FILES)]
ROWS = {
    "none": [],
    "drawn": [(f, label, None) for f, label in LABELLED],
    "splits": [
        (f, label, ("training", "training", "validation", "training", "training", "evaluation")[i])
        for i, (f, label) in enumerate(LABELLED)
    ],
}


def write_files(root: Path) -> None:
    (root / "img").mkdir(parents=True)
    for i, name in enumerate(FILES):
        (root / name).write_bytes(PHOTOS[i])
    (root / "img" / "bad.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    (root / "img" / "notes.txt").write_text("notes\n")
    os.symlink("0.jpg", root / "img" / "link.jpg")
    os.symlink("loop.jpg", root / "img" / "loop.jpg")
    os.symlink("nowhere.jpg", root / "img" / "dangling.jpg")
    (root.parent / "outside.jpg").write_bytes(PHOTOS[7])


def manifest_bytes(root: Path, rows, header: bool, bom: bool, quoted: bool, newline: str, junk: bytes | None) -> bytes:
    absolute = {"{outside}": str(root.parent / "outside.jpg"), "{inside}": str(root / "img" / "3.jpg")}
    cells = [[absolute.get(path, path), label] + ([] if split is None else [split]) for path, label, split in rows]
    if header:
        cells.insert(0, ["path", "label"] + (["split"] if any(len(c) == 3 for c in cells) else []))
    if quoted:
        text = io.StringIO()
        csv.writer(text, lineterminator=newline).writerows(cells)
        text = text.getvalue()
    else:
        text = "".join(",".join(c) + newline for c in cells)
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode() + (junk + b"\n" if junk else b"")


def outcome(data: Path, **options):
    """What loading gives: the samples and classes, or the error's message."""
    try:
        ds = load_dataset(data, **options)
    except HeadstartError as e:
        return str(e)
    return [(str(s.path), s.label, s.split) for s in ds.samples], ds.classes


MANIFEST = dict(header=True, bom=False, quoted=False, newline="\n", junk=None, classes=None, allow=False, as_file=False)


@FEW
@given(
    base=st.sampled_from(sorted(ROWS)),
    extra=st.lists(ROW, max_size=8),
    header=st.booleans(),
    bom=st.booleans(),
    quoted=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    junk=st.one_of(st.none(), st.none(), st.none(), st.binary(min_size=1, max_size=8)),
    classes=st.one_of(st.none(), st.none(), st.lists(LABELS, max_size=4)),
    allow=st.booleans(),
    as_file=st.booleans(),
)
@example(base="drawn", extra=[], **{**MANIFEST, "bom": True})  # Excel's BOM: the header was a row, 'label' a class
@example(base="drawn", extra=[("./img/0.jpg", "cat", None)], **MANIFEST)  # one file twice: drawn into two splits
@example(base="splits", extra=[("img/0.jpg", "cat", "evaluation")], **MANIFEST)  # in training and in evaluation
@example(base="drawn", extra=[("../outside.jpg", "cat", None)], **MANIFEST)  # outside the manifest's folder
@example(base="drawn", extra=[("img/bad.jpg", "\u00b2", None)], **MANIFEST)  # int("²") fails
def test_any_manifest_is_read_or_refused(
    tmp_path_factory, base, extra, header, bom, quoted, newline, junk, classes, allow, as_file
):
    same = {"drawn": None, "splits": "training"}.get(base)
    rows = ROWS[base] + [(path, label, same if split == "as the others" else split) for path, label, split in extra]
    with fresh_folder(tmp_path_factory) as folder:
        root = folder / "data"
        write_files(root)
        if classes is not None:
            (root / "classes.txt").write_text("\n".join(classes) + "\n")
        manifest = root / ("list.csv" if as_file else "manifest.csv")
        manifest.write_bytes(manifest_bytes(root, rows, header, bom, quoted, newline, junk))
        data = manifest if as_file else root
        options = {"allow_outside_root": True} if allow else {}  # refused by default
        ds = loaded(data, **options)
        if ds is not None:
            assert "label" not in ds.classes and "path" not in ds.classes, "a header read as a row"
            if not allow:
                for s in ds.samples:  # inside as written, or with links followed
                    where = {os.path.normpath(s.path), os.path.realpath(s.path)}
                    assert any(w.startswith(f"{root}{os.sep}") for w in where), f"{s.path} is outside {root}"
            decoded(ds, folder / "cache")
        if bom and not junk:  # a byte-order mark changes nothing
            manifest.write_bytes(manifest_bytes(root, rows, header, False, quoted, newline, junk))
            without = outcome(data, **options)
            manifest.write_bytes(manifest_bytes(root, rows, header, True, quoted, newline, junk))
            assert outcome(data, **options) == without


# --- image bytes: anything, or a real image cut short or damaged ------------------------------


def decodes_or_refuses(decode) -> None:
    try:
        image = decode()
    except ImageError:
        return
    image = image[0] if isinstance(image, tuple) else image
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@FEW
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns of corrupt EXIF on the way to an error
@given(
    data=st.binary(max_size=600),
    head=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM", b"II*\x00"]
    ),
)
def test_any_bytes_decode_or_raise_an_image_error(data, head):
    decodes_or_refuses(lambda: decode_bytes(head + data))


@FEW
@pytest.mark.filterwarnings("ignore::UserWarning")
@given(
    fmt=st.sampled_from(sorted(IMAGES)),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),
)
def test_damaged_images_decode_or_raise_an_image_error(tmp_path_factory, fmt, cut, flips):
    data = bytearray(IMAGES[fmt][: round(cut * len(IMAGES[fmt]))])
    for where, byte in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = byte
    decodes_or_refuses(lambda: decode_bytes(bytes(data)))
    with fresh_folder(tmp_path_factory) as folder:
        path = folder / f"image.{fmt.lower()}"
        path.write_bytes(bytes(data))
        decodes_or_refuses(lambda: decode_image(path, MAX_PIXELS))


# What a checkpoint or a run's config.yaml may claim: any value, for any key they hold.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
CHECKPOINT_KEYS = [
    ("preprocessing", k) for k in ("input_size", "resize", "interpolation", "mean", "std", "channels")
] + [("model", k) for k in ("num_classes", "input_size", "head", "backbone", "weights")]


@pytest.fixture(scope="module")
def toy_checkpoint(toy_run):
    import torch

    return torch.load(toy_run.best_checkpoint, weights_only=True, map_location="cpu")


@settings(max_examples=25, deadline=None, database=None)  # each example builds a model
@given(where=st.sampled_from(CHECKPOINT_KEYS), value=ANY_VALUE)
@example(where=("preprocessing", "input_size"), value=60000)
@example(where=("model", "input_size"), value=-5)
@example(where=("model", "num_classes"), value=10**9)
def test_a_checkpoints_claims_are_checked_before_anything_is_allocated(toy_checkpoint, tmp_path_factory, where, value):
    import copy

    import torch

    import headstart

    ckpt = copy.deepcopy(toy_checkpoint)
    section, key = where
    ckpt["headstart"][section][key] = value
    with fresh_folder(tmp_path_factory) as tmp:
        path = tmp / "hostile.ckpt"
        torch.save(ckpt, path)
        try:
            predictor = headstart.load(path)
        except HeadstartError:
            event("refused")
            return
        event("loaded")
        size = predictor.model.preprocessing.input_size
        assert 1 <= size <= 4096 and 2 <= len(predictor.classes) <= 100_000


@FEW
@given(
    key=st.sampled_from(["epochs", "augment", "tta", "input_size", "name", "aug_views", "batch_size", "lr"]),
    value=ANY_VALUE,
)
def test_a_runs_config_yaml_is_checked_as_the_command_line_is(tmp_path_factory, key, value):
    import yaml

    from headstart.config import load_config

    with fresh_folder(tmp_path_factory) as tmp:
        path = tmp / "config.yaml"
        try:
            path.write_text(yaml.safe_dump({"data": "demo", key: value}))
        except (yaml.YAMLError, UnicodeEncodeError):
            return
        try:
            cfg = load_config(path)
        except HeadstartError:
            return
        assert cfg.aug_views == "auto" or (isinstance(cfg.aug_views, int) and 0 <= cfg.aug_views <= 64)
        assert cfg.epochs >= 1 and isinstance(cfg.augment, bool) and isinstance(cfg.tta, bool)
