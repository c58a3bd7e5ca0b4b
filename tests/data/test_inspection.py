"""Inspection: every image decoded once, broken ones dropped, the summary, and `headstart inspect`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.data.dataset import load_dataset
from headstart.data.inspection import inspect_dataset, summarize, verify_images
from headstart.errors import DataError
from helpers.broken_data import DATA_ERRORS, LAYOUT_ERRORS
from helpers.datasets import make_food11

runner = CliRunner()
MESSY_COUNTS = {"training": [4, 4, 5], "validation": [3, 2, 2], "evaluation": [2, 2, 2]}


def inspect_cli(*args: str):
    return runner.invoke(app, ["inspect", *map(str, args)])


# --- the example --------------------------------------------------------------------


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
    assert f"Next: headstart audit {messy} finds duplicates" in " ".join(text.split())  # where to go next


def test_summary_of_the_messy_example_without_pictures(messy: Path, tmp_path: Path):
    summary = inspect_dataset(messy, progress=False)  # no ``out``: nothing is written
    assert sorted(p.name for p in messy.iterdir()) == ["classes.txt", "evaluation", "training", "validation"]
    assert summary.layout == "food11" and summary.root == str(messy)
    assert summary.counts == MESSY_COUNTS and summary.imbalance == 1.25
    # 26 usable images, all 48 x 40: 24 RGB JPEGs, a CMYK JPEG and an RGBA PNG.
    assert summary.modes == {"RGB": 24, "CMYK": 1, "RGBA": 1}
    assert summary.formats == {"JPEG": 25, "PNG": 1}
    assert summary.sizes == {
        "width": {"min": 48, "median": 48, "max": 48},
        "height": {"min": 40, "median": 40, "max": 40},
    }
    assert summary.distinct_sizes == 1
    assert [p["reason"].startswith("cannot decode") for p in summary.problems] == [True]
    assert summary.ignored == [str(messy / "training" / "notes.txt")] and summary.drawn == []


def test_summarize_sizes_and_imbalance(tmp_path: Path):
    root = make_food11(tmp_path / "d", {"training": [6, 2], "validation": [1, 1], "evaluation": [1, 1]})
    Image.new("RGB", (100, 30)).save(root / "training" / "0_50.png")
    ds, images = verify_images(load_dataset(root), progress=False)
    summary = summarize(ds, images)
    assert summary.imbalance == 3.5  # 7 / 2
    assert summary.sizes["width"] == {"min": 48, "median": 48, "max": 100}
    assert summary.sizes["height"] == {"min": 30, "median": 40, "max": 40}
    assert summary.distinct_sizes == 2
    assert summary.to_dict()["counts"] == ds.counts()


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
    with caplog.at_level(logging.WARNING, logger="headstart.data.dataset"):
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


@pytest.mark.parametrize("case", LAYOUT_ERRORS + DATA_ERRORS, ids=lambda case: case.__name__)
def test_unusable_data_exits_2_with_the_message_and_writes_nothing(tmp_path: Path, case):
    """Every refusal of tests/data/test_layouts.py and tests/data/test_dataset.py, through the CLI."""
    out = tmp_path / "out"

    def check(dataset: Path, *needles: str, val_fraction: float = 0.2, eval_fraction: float = 0.2) -> None:
        result = inspect_cli(dataset, "--out", out, "--val-fraction", val_fraction, "--eval-fraction", eval_fraction)
        assert result.exit_code == 2, result.output
        message = " ".join(result.output.split())  # rich may break long lines
        assert message.startswith("error:")
        for needle in needles:
            assert needle in message, message
        assert not out.exists(), "nothing may be written when the data is unusable"

    case(tmp_path, check)


def test_inspect_lists_broken_links_as_problems(tmp_path: Path):
    """Self-referencing and dangling links: listed with their reason, not a traceback."""
    from helpers.broken_data import add_broken_links

    root = make_food11(tmp_path / "d")
    reasons = add_broken_links(root / "training", prefix="0_")
    out = tmp_path / "out"
    result = inspect_cli(root, "--out", out)
    assert result.exit_code == 0, result.output
    assert "Skipped 2 unreadable image(s)" in result.output
    problems = json.loads((out / "inspect.json").read_text())["problems"]
    assert {Path(p["path"]).name: p["reason"] for p in problems} == reasons


def test_console_script_runs_and_exits_2_on_bad_data(tmp_path: Path):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "headstart"
    ok = subprocess.run([exe, "inspect", "demo", "--out", tmp_path / "demo"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "Training data available in 10 classes" in ok.stdout
    assert (tmp_path / "demo" / "samples.png").stat().st_size > 10_000
    bad = subprocess.run(
        [sys.executable, "-m", "headstart", "inspect", tmp_path / "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert f"DATA '{tmp_path / 'nope'}' does not exist" in " ".join(bad.stderr.split())
