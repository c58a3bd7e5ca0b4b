"""Multi-label data: a manifest's ``|`` labels, the task (auto, single, multi), the errors, the splits drawn by
iterative stratification, and what ``inspect`` says of the labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from headstart.cli.main import app
from headstart.data.dataset import load_dataset, multi_hot, split_indices
from headstart.errors import DataError
from helpers.datasets import make_food11, make_multilabel, photo

runner = CliRunner()


def _manifest(root: Path, rows: list[str], header: str = "path,labels,split", classes: str | None = None) -> Path:
    """A manifest over real photos: each row ``labels[,split]``, its photo img_<n>.jpg written here."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [header]
    for n, row in enumerate(rows):
        photo(n).save(root / f"img_{n}.jpg")
        lines.append(f"img_{n}.jpg,{row}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root / "manifest.csv"


SPLIT_ROWS = [
    "rice|egg,training",
    "egg,training",
    "rice|salad,training",
    "salad|egg|rice,training",
    "egg|salad,validation",
    "rice,validation",
    "egg|rice,evaluation",
    "salad,evaluation",
]


def test_a_manifest_with_several_labels_is_multi_label(tmp_path: Path):
    ds = load_dataset(_manifest(tmp_path / "d", SPLIT_ROWS))
    assert ds.task == "multi" and ds.multi_label
    assert ds.classes == ["egg", "rice", "salad"]  # names sorted, as for single labels
    by_name = {s.path.name: s.label for s in ds.samples}
    assert by_name["img_0.jpg"] == (0, 1) and by_name["img_1.jpg"] == (0,) and by_name["img_3.jpg"] == (0, 1, 2)
    # counts: the images each class is a label of
    assert ds.counts() == {"training": [3, 3, 2], "validation": [1, 1, 1], "evaluation": [1, 1, 1]}
    idx, y = split_indices(ds)["training"]
    assert y.dtype == np.float32 and y.shape == (4, 3)
    assert y.tolist() == [[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 1, 1]]
    assert ds.label_name(ds.samples[idx[3]].label) == "egg|rice|salad"


def test_task_single_refuses_several_labels_and_multi_takes_single_labels(tmp_path: Path, tiny):
    manifest = _manifest(tmp_path / "d", SPLIT_ROWS)
    with pytest.raises(DataError, match=r"line 2: 2 labels \(rice\|egg\) with --task single.*--task multi"):
        load_dataset(manifest, task="single")
    result = runner.invoke(app, ["inspect", str(manifest), "--task", "single", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--task single" in result.output and not (tmp_path / "out").exists()
    # single labels as multi-label data: one sigmoid a class, each image one label (any layout)
    ds = load_dataset(tiny, task="multi")
    assert ds.task == "multi" and all(isinstance(s.label, tuple) and len(s.label) == 1 for s in ds.samples)
    assert load_dataset(tiny).task == "single" and isinstance(load_dataset(tiny).samples[0].label, int)
    with pytest.raises(DataError, match="Unknown task 'several'"):
        load_dataset(tiny, task="several")


@pytest.mark.parametrize(
    "rows, classes, message",
    [
        (["rice||egg,training"], None, r"line 2: an empty label in 'rice\|\|egg'"),
        (["rice|,training"], None, "an empty label"),
        (["rice|soup,training", "rice,validation", "rice,evaluation"], "rice\negg\n", "'soup' is not listed in"),
        (
            ["rice,training", "rice|egg,validation", "egg,evaluation"],
            None,
            "Class 0 'egg' has no positive training image",
        ),
    ],
)
def test_bad_multi_label_manifests_are_refused_with_the_line(tmp_path: Path, rows, classes, message):
    manifest = _manifest(tmp_path / "d", rows, classes=classes)
    with pytest.raises(DataError, match=message):
        load_dataset(manifest)
    result = runner.invoke(app, ["inspect", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_class_ids_with_a_classes_file(tmp_path: Path):
    manifest = _manifest(
        tmp_path / "d",
        ["0|2,training", "1,training", "2|1,validation", "0,evaluation"],
        "path,label,split",
        "a\nb\nc\n",
    )
    ds = load_dataset(manifest)
    assert ds.classes == ["a", "b", "c"] and ds.samples[0].label == (0, 2) and ds.samples[2].label == (1, 2)


def test_drawn_splits_keep_every_labels_count(tmp_path: Path):
    """Iterative stratification: each class is a label of its share of the validation and evaluation images, to
    the image (a random draw of 24 of these 120 images misses by 2.6 on average, by up to 6)."""
    manifest = make_multilabel(tmp_path / "d", n=120, size=32)
    for seed in range(10):
        ds = load_dataset(manifest, seed=seed)
        assert ds.drawn == ("validation", "evaluation")
        total = multi_hot([s.label for s in ds.samples], 3).sum(0)
        for split in ("validation", "evaluation"):
            count = multi_hot([s.label for s in ds.split(split)], 3).sum(0)
            assert np.abs(count - 0.2 * total).max() < 1, (seed, split, count, total)
            assert 18 <= len(ds.split(split)) <= 30  # labels are dealt out, images follow (24 asked)
    again = load_dataset(manifest, seed=9)
    assert [s.split for s in again.samples] == [s.split for s in ds.samples]  # seeded


def test_iterative_stratification_deals_rows_without_labels_by_size_and_keeps_rare_labels_in_training(tmp_path):
    from headstart.data.stratify import iterative_stratification

    y = np.zeros((50, 2), bool)
    y[:10, 0] = True  # ten of label 0, none of label 1 among the first; the rest have no label
    subset = iterative_stratification(y, [0.6, 0.2, 0.2], np.random.default_rng(0))
    assert np.bincount(subset[:10], minlength=3).tolist() == [6, 2, 2]
    assert np.bincount(subset, minlength=3).tolist() == [30, 10, 10]
    # a class with a single image stays in training when validation and evaluation are drawn
    rows = ["a|b"] * 2 + ["a"] * 8 + ["a|c"]
    ds = load_dataset(_manifest(tmp_path / "rare", rows, header="path,labels"), seed=0)
    assert [s.split for s in ds.samples if 2 in s.label] == ["training"]


def test_inspect_shows_labels_per_image_and_the_pairs_seen_together(tmp_path: Path):
    manifest = _manifest(tmp_path / "d", SPLIT_ROWS)
    result = runner.invoke(app, ["inspect", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "Images per label" in result.output
    assert "1.75 labels an image on average (1 label: 3, 2 labels: 4, 3 labels: 1)" in result.output
    saved = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert saved["task"] == "multi"
    assert saved["labels_per_image"] == {"mean": 1.75, "max": 3, "1": 3, "2": 4, "3": 1}
    assert saved["cooccurrences"] == [
        {"labels": ["egg", "rice"], "images": 3},
        {"labels": ["egg", "salad"], "images": 2},
        {"labels": ["rice", "salad"], "images": 2},
    ]


def test_a_single_label_inspection_says_nothing_of_labels(tmp_path: Path):
    data = make_food11(tmp_path / "f", {"training": [3, 3], "validation": [1, 1], "evaluation": [1, 1]})
    result = runner.invoke(app, ["inspect", str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "out" / "inspect.json").read_text())
    assert {"task", "labels_per_image", "cooccurrences"}.isdisjoint(saved) and "Multi-label" not in result.output
