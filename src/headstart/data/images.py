"""Image decoding: any file Pillow reads becomes 8-bit RGB, upright, or an ImageError with the reason.

Also the files of a dataset: which are images, which cannot be read (a dangling link), where a
path really leads, and text files (a manifest, classes.txt) read as UTF-8.

Training, evaluation, prediction and serving all decode through ``decode_image`` /
``decode_bytes``, so a photo gets the same pixels everywhere.
"""

from __future__ import annotations

import io
import numbers
import os
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from headstart.errors import ConfigError, DataError, ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Pillow's own decompression-bomb threshold (1024 * 1024 * 1024 // 4 // 3 pixels, ~0.25 GB of
# RGB): far above any photo a classifier is trained on, far below what exhausts memory.
MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ImageInfo:
    """What an image was before it became 8-bit RGB (size after EXIF orientation)."""

    path: Path
    width: int
    height: int
    mode: str
    format: str


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def visible(entries) -> list[Path]:
    """The entries whose names do not start with a dot, sorted."""
    return sorted(p for p in entries if not p.name.startswith("."))


def files_under(folder: Path) -> list[Path]:
    """Every visible file below ``folder``, sorted (hidden files and folders are skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out)


def read_text(path: Path) -> str:
    """A text file's content, UTF-8 with or without a byte-order mark, or a DataError naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        line = next((n for n, text in enumerate(data.splitlines(), start=1) if not _decodes(text)), 1)
        raise DataError(f"{path}, line {line}: not UTF-8 text. Save the file as UTF-8 (in Excel: CSV UTF-8).") from None


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    return True


def real_path(path: Path) -> str:
    """The path with every link followed and every ``..`` resolved (the file it names)."""
    try:
        return os.path.realpath(path)
    except ValueError:  # a NUL in the name: no file has it
        return os.path.normpath(os.path.abspath(path))


def real_paths(paths: list[Path]) -> list[str]:
    """``real_path`` of each path, with each folder resolved once: one ``lstat`` a file."""
    folders: dict[str, str] = {}
    out = []
    for path in paths:
        folder, name = os.path.split(os.fspath(path))
        try:
            direct = name not in ("", ".", "..") and not stat.S_ISLNK(os.lstat(path).st_mode)
        except (OSError, ValueError):  # missing, or a name the system refuses: realpath says what it can
            direct = False
        if direct and folder not in folders:
            folders[folder] = real_path(Path(folder or "."))
        out.append(os.path.join(folders[folder], name) if direct else real_path(path))
    return out


def is_inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


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


def file_size(path: Path) -> int:
    """The size of the file at ``path``, or an ImageError saying why it cannot be read: missing,
    a dangling or self-referencing link, a name the system refuses, or not a file (a folder, a pipe)."""
    try:
        st = path.stat()
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror or e}") from None
    except ValueError as e:  # a NUL in the name
        raise ImageError(f"cannot read: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("cannot read: not a file")
    return st.st_size


def unreadable(path: Path) -> str | None:
    """Why the file at ``path`` cannot be read (the reason ``decode_image`` would give), or None."""
    try:
        file_size(path)
    except ImageError as e:
        return str(e)
    return None


def decode_image(path: Path, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    if file_size(path) == 0:
        raise ImageError("empty file (0 bytes)")
    return _decode(path, path, max_pixels)


def decode_bytes(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "upload") -> Image.Image:
    """``decode_image`` for the bytes of an image file (an upload): the same checks and conversions."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    return _decode(io.BytesIO(data), Path(name), max_pixels)[0]


# Pillow refuses images over twice its own limit (Image.MAX_IMAGE_PIXELS, a module global) whatever
# max_pixels says. While headstart decodes, that limit is the largest max_pixels of the decodes under
# way (one per thread), so max_pixels decides; each decode still checks its own max_pixels below.
_LIMITS_LOCK = threading.Lock()
_LIMITS: list[int] = []  # the max_pixels of the decodes under way
_PILLOWS_OWN: list[int | None] = []  # Pillow's limit before them


@contextmanager
def _pillow_limit(max_pixels: int):
    with _LIMITS_LOCK:
        if not _LIMITS:
            _PILLOWS_OWN[:] = [Image.MAX_IMAGE_PIXELS]
        _LIMITS.append(max_pixels)
        Image.MAX_IMAGE_PIXELS = max(_LIMITS)
    try:
        yield
    finally:
        with _LIMITS_LOCK:
            _LIMITS.remove(max_pixels)
            Image.MAX_IMAGE_PIXELS = max(_LIMITS) if _LIMITS else _PILLOWS_OWN[0]


def _decode(source, path: Path, max_pixels: int) -> tuple[Image.Image, ImageInfo]:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
        raise ConfigError(
            f"max_pixels must be a whole number of pixels, at least 1. Received: max_pixels={max_pixels!r}"
        )
    try:
        with warnings.catch_warnings(), _pillow_limit(max_pixels):
            # Our own limit below decides: Pillow's warning is for images between its limit and twice it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} "
                        "(a decompression bomb?); raise max_pixels if the image is genuine",
                        "too_large",
                    )
                im.load()  # the first frame of a GIF or TIFF; reads every byte, so truncation shows
                mode, fmt = im.mode, im.format or path.suffix.lstrip(".").upper()
                rgb = to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except Image.DecompressionBombError:  # a frame or tile over max_pixels (twice it, as Pillow counts)
        raise ImageError(
            f"a frame or tile is over the limit of {max_pixels:,} pixels (a decompression bomb?); "
            "raise max_pixels if the image is genuine",
            "too_large",
        ) from None
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
