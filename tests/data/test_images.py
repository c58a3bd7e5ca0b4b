"""Decoding: every format and colour mode becomes 8-bit RGB, orientation applied, bombs refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import images as images
from headstart.data.images import MAX_PIXELS, decode_bytes, load_image
from headstart.errors import ConfigError, ImageError
from helpers.datasets import photo

LOSSLESS = ["png", "bmp", "tiff", "webp_lossless", "gif"]


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "bmp", "gif", "tiff", "webp_lossless"])
def test_every_format_decodes_to_rgb_of_the_same_picture(tmp_path: Path, fmt: str):
    original = photo(0, (64, 48))
    ext = {"jpeg": "jpg", "webp_lossless": "webp"}.get(fmt, fmt)
    path = tmp_path / f"img.{ext}"
    if fmt == "webp_lossless":
        original.save(path, lossless=True)
    else:
        original.save(path)
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (64, 48)
    diff = np.abs(np.asarray(im, dtype=int) - np.asarray(original, dtype=int)).mean()
    # GIF is 256 colours; JPEG and lossy WebP are lossy: close, not equal.
    assert diff == 0 if fmt in ("png", "bmp", "tiff", "webp_lossless") else diff < 12


def test_gif_gives_its_first_frame(tmp_path: Path):
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    red.save(tmp_path / "a.gif", save_all=True, append_images=[blue])
    assert load_image(tmp_path / "a.gif").getpixel((4, 4)) == (255, 0, 0)


def test_greyscale_and_palette(tmp_path: Path):
    grey = photo(1).convert("L")
    grey.save(tmp_path / "g.png")
    im = np.asarray(load_image(tmp_path / "g.png"))
    assert im.shape[2] == 3 and (im[..., 0] == np.asarray(grey)).all() and (im[..., 0] == im[..., 2]).all()
    pal = photo(1).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "p.png")), np.asarray(pal.convert("RGB")))


def test_transparency_is_composited_on_white(tmp_path: Path):
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))  # opaque red stays red
    rgba.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black becomes grey
    rgba.save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 0)) == (255, 0, 0)
    assert 120 <= im.getpixel((2, 0))[0] <= 135
    # A palette image with a transparent colour, and greyscale with alpha, too.
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "p.png").getpixel((1, 0)) == (10, 200, 30)
    Image.new("LA", (1, 1), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path: Path):
    original = photo(2, (64, 48))
    original.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as raw:
        assert raw.mode == "CMYK"
    im = load_image(tmp_path / "c.jpg")
    assert im.mode == "RGB"
    assert np.abs(np.asarray(im, dtype=int) - np.asarray(original, dtype=int)).mean() < 12


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_16_bit_greyscale_is_scaled_to_8_bit(tmp_path: Path, ext: str):
    arr = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / f"deep.{ext}")
    with Image.open(tmp_path / f"deep.{ext}") as raw:
        assert raw.mode.startswith("I")
    im = load_image(tmp_path / f"deep.{ext}")
    assert [im.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_exif_orientation_is_applied(tmp_path: Path):
    im = Image.new("RGB", (60, 40), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o.jpg")
    assert out.size == (40, 60)
    r, g, b = out.getpixel((20, 10))  # the red left half is now on top
    assert r > 200 and b < 60


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid PNG whose header claims width x height (a decompression bomb)."""
    Image.new("L", (1, 1)).save(path)
    blob = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    blob[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    blob[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(blob[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_decompression_bombs_are_refused(tmp_path: Path, side: int):
    path = _png_with_size(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


def test_pixel_limit_is_settable(tmp_path: Path):
    photo(0, (64, 48)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", max_pixels=64 * 48).size == (64, 48)
    with pytest.raises(ImageError, match="64x48 = 3,072 pixels is over the limit of 3,000"):
        load_image(tmp_path / "a.png", max_pixels=3000)


def test_max_pixels_above_pillows_own_limit_lets_the_image_decode(tmp_path: Path, monkeypatch):
    """Pillow refuses over twice its MAX_IMAGE_PIXELS (178,956,970) whatever max_pixels said; now
    max_pixels decides. 14,000 x 14,000 = 196 M pixels: 24 kB on disk, 196 MB opened (a byte a pixel)."""
    side = 14_000
    Image.new("1", (side, side)).save(tmp_path / "big.png")
    own = Image.MAX_IMAGE_PIXELS
    assert side * side > 2 * own
    with pytest.raises(ImageError, match=f"over the limit of {MAX_PIXELS:,}") as raised:
        load_image(tmp_path / "big.png")  # the default limit still refuses it, in headstart's words
    assert raised.value.kind == "too_large"
    # Opened and read in full (where Pillow's limit applies), but not turned (a copy) nor made RGB (0.6 GB).
    monkeypatch.setattr(images.ImageOps, "exif_transpose", lambda im: im)
    monkeypatch.setattr(images, "to_rgb", lambda im: im)
    im, info = images.decode_image(tmp_path / "big.png", max_pixels=side * side)
    assert im.size == (side, side) and info.mode == "1" and im.getpixel((side - 1, side - 1)) == 0
    assert Image.MAX_IMAGE_PIXELS == own  # Pillow's limit is its own again


def test_max_pixels_governs_every_step_of_a_decode(tmp_path: Path, monkeypatch):
    """The same with Pillow's limit made small: the whole decode (orientation, RGB) follows max_pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    photo(0, (64, 48)).save(tmp_path / "a.png")  # 3,072 pixels: over twice Pillow's limit
    assert load_image(tmp_path / "a.png", max_pixels=64 * 48).size == (64, 48)
    assert decode_bytes((tmp_path / "a.png").read_bytes(), max_pixels=10_000).size == (64, 48)
    with pytest.raises(ImageError, match="64x48 = 3,072 pixels is over the limit of 3,000"):
        load_image(tmp_path / "a.png", max_pixels=3000)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_max_pixels_must_be_a_positive_whole_number(tmp_path: Path):
    photo(0, (8, 8)).save(tmp_path / "a.png")
    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match=f"max_pixels must be .* at least 1. Received: max_pixels={bad}"):
            load_image(tmp_path / "a.png", max_pixels=bad)


@pytest.mark.parametrize(
    "content, reason",
    [(b"", r"empty file \(0 bytes\)"), (b"plain text, not a picture", "cannot decode: not an image Pillow recognises")],
)
def test_unreadable_files_raise_with_a_reason(tmp_path: Path, content: bytes, reason: str):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(tmp_path / "x.jpg")


def test_float_tiff_is_scaled_to_8_bit(tmp_path: Path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tiff")
    im = load_image(tmp_path / "f.tiff")
    assert [im.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_bytes_decode_to_the_same_pixels_as_the_file(tmp_path: Path):
    """An upload (decode_bytes) and a file on disk (load_image) give a photo the same pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6
    photo(3, (64, 48)).save(tmp_path / "o.jpg", exif=exif)
    photo(3, (64, 48)).convert("CMYK").save(tmp_path / "c.jpg")
    for name in ("o.jpg", "c.jpg"):
        from_bytes = decode_bytes((tmp_path / name).read_bytes(), name=name)
        assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(tmp_path / name)))
    assert decode_bytes((tmp_path / "o.jpg").read_bytes()).size == (48, 64)  # orientation applied


@pytest.mark.parametrize(
    "content, kind", [(b"", "unreadable"), (b"plain text, not a picture", "not_image"), (None, "too_large")]
)
def test_image_errors_say_what_kind_of_problem(tmp_path: Path, content, kind: str):
    data = _png_with_size(tmp_path / "bomb.png", 10_000, 10_000).read_bytes() if content is None else content
    with pytest.raises(ImageError) as raised:
        decode_bytes(data)
    assert raised.value.kind == kind


def test_a_bomb_caught_by_pillow_is_said_once_with_our_limit(tmp_path: Path, monkeypatch):
    photo(0, (64, 48)).save(tmp_path / "a.png")

    def bomb(*args, **kwargs):
        raise Image.DecompressionBombError("Image size (9 pixels) exceeds limit of 4 pixels, could be ... attack.")

    monkeypatch.setattr(Image, "open", bomb)
    with pytest.raises(ImageError) as refused:
        load_image(tmp_path / "a.png", max_pixels=5000)
    message = str(refused.value)
    assert "over the limit of 5,000 pixels (a decompression bomb?)" in message
    assert "attack" not in message and ".." not in message and "4 pixels" not in message
