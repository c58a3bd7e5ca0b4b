"""The audit: what it finds on photos with known faults (a leak, a near copy, flipped labels, a blank), what it
writes, and that training leaves out what suspects.csv lists."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from headstart.auditing import duplicates as D
from headstart.cli.main import app
from headstart.data.dataset import demo_root, load_dataset
from helpers.browser import chromium_browser

CLASSES = {1: "Trouser", 7: "Sneaker", 8: "Bag"}  # three demo classes a frozen backbone tells apart
FLIPPED = {
    "training/1_0.png": "Bag",
    "training/7_0.png": "Trouser",
    "training/8_0.png": "Sneaker",
    "training/1_1.png": "Sneaker",
}


def _faulty(root: Path) -> dict[str, str]:
    """A manifest dataset of demo photos (3 classes, 40/10/10 a class) with faults put in on purpose; what each is."""
    rows, faults = [], {}
    for split, per_class in (("training", 40), ("validation", 10), ("evaluation", 10)):
        (root / split).mkdir(parents=True)
        for cid, name in CLASSES.items():
            for n, f in enumerate(sorted((demo_root() / split).glob(f"{cid}_*.png"))[:per_class]):
                rel = f"{split}/{cid}_{n}.png"
                shutil.copy(f, root / rel)
                rows.append([rel, FLIPPED.get(rel, name), split])
    shutil.copy(root / "training/7_5.png", root / "evaluation/leak.png")  # the same file, in evaluation
    rows.append(["evaluation/leak.png", "Sneaker", "evaluation"])
    photo = Image.open(root / "training/8_5.png").convert("RGB")  # resized to 80 %, re-encoded as JPEG, mirrored
    ImageOps.mirror(photo.resize((22, 22))).save(root / "validation/copy.jpg", quality=75)
    rows.append(["validation/copy.jpg", "Bag", "validation"])
    Image.new("RGB", (28, 28), (128, 128, 128)).save(root / "training/blank.png")
    rows.append(["training/blank.png", "Trouser", "training"])
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    faults.update({"leak": "evaluation/leak.png", "copy": "validation/copy.jpg", "blank": "training/blank.png"})
    return faults


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    faults = _faulty(root / "data")
    out = root / "audit"
    res = CliRunner().invoke(app, ["audit", str(root / "data" / "labels.csv"), "--input-size", "64", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return root / "data", out, faults, res.output


def test_the_audit_finds_the_leaks_the_flipped_labels_and_the_blank(audited):
    data, out, faults, output = audited
    a = json.loads((out / "audit.json").read_text())
    rel = lambda p: str(Path(p).relative_to(data))
    exact = [sorted(rel(p["path"]) for p in g) for g in a["exact_duplicates"]]
    assert exact == [["evaluation/leak.png", "training/7_5.png"]]
    near = {tuple(sorted((rel(p["a"]["path"]), rel(p["b"]["path"])))): p for p in a["near_duplicate_pairs"]}
    assert near[("training/8_5.png", "validation/copy.jpg")]["leak"] is True
    t = a["near_duplicates"]
    assert t["copies"] == 64 and 0.8 <= t["feature_threshold"] < 1 and 0.9 <= t["pixel_threshold"] < 1
    issues = [rel(i["path"]) for i in a["label_issues"]]
    assert set(FLIPPED) <= set(issues[:8]), issues  # every flipped label, among the first flagged
    suggested = {rel(i["path"]): i["suggested"] for i in a["label_issues"]}
    assert {p: suggested[p] for p in FLIPPED} == {p: CLASSES[int(Path(p).name[0])] for p in FLIPPED}
    assert [rel(b["path"]) for b in a["near_blank"]] == ["training/blank.png"]
    assert a["counts"]["leaks"] >= 2 and "Leaks between splits" in output and "suspects.csv" in output
    # suspects.csv: the manifest's format, the copy in the later split of each leak (never the training original)
    with open(out / "suspects.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label", "split"]
    listed = {rel(r[0]): (r[1], r[2]) for r in rows[1:]}
    assert listed["evaluation/leak.png"] == ("Sneaker", "evaluation") and "training/7_5.png" not in listed
    assert listed["validation/copy.jpg"] == ("Bag", "validation") and "training/8_5.png" not in listed
    assert set(FLIPPED) | {"training/blank.png"} <= set(listed)


def test_audit_html_shows_the_photos_in_a_browser(audited, tmp_path: Path):
    from selenium.webdriver.common.by import By

    _, out, _, _ = audited
    html = (out / "audit.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    browser = chromium_browser(tmp_path)
    try:
        browser.get((out / "audit.html").as_uri())
        sections = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        assert sections[:3] == [
            "Leaks: the same photo in two splits",
            "Duplicates within a split",
            "Likely label mistakes",
        ]
        shown = browser.execute_script(
            "return [...document.querySelectorAll('.pair img, .photos img')].map(i => i.complete && i.naturalWidth)"
        )
        assert len(shown) >= 4 + 4 + 1 and set(shown) == {112}  # the leak pairs, the flipped photos, the blank
    finally:
        browser.quit()


def test_train_leaves_out_what_suspects_csv_lists(audited, tmp_path: Path):
    data, out, _, _ = audited
    suspects = out / "suspects.csv"
    with open(suspects, newline="") as f:
        listed = {str(Path(r[0]).resolve()) for r in list(csv.reader(f))[1:]}
    full = load_dataset(data / "labels.csv")
    kept = load_dataset(data / "labels.csv", exclude=suspects)
    assert {str(p.resolve()) for p in kept.excluded} == listed
    assert len(kept.samples) == len(full.samples) - len(listed)
    # the others stay in the splits they had
    before = {s.path: s.split for s in full.samples}
    assert all(before[s.path] == s.split for s in kept.samples)
    args = ["train", str(data / "labels.csv"), "--exclude", str(suspects), "--backbone", "test_efficientnet"]
    args += ["--weights", "none", "--strategy", "features", "--epochs", "1", "--input-size", "32"]
    res = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path / "runs"), "--name", "clean"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "runs" / "clean" / "data.json").read_text())
    assert {str(Path(p).resolve()) for p in info["excluded"]} == listed
    assert sum(map(sum, info["counts"].values())) == len(kept.samples)
    res = CliRunner().invoke(app, ["train", str(data / "labels.csv"), "--exclude", str(tmp_path / "nope.csv")])
    assert res.exit_code == 2 and "nope.csv" in res.output and "suspects.csv" in res.output


def test_near_duplicates_are_searched_in_blocks_with_the_same_result(monkeypatch):
    features = torch.randn(300, 16)
    features[200] = features[10] + 0.01 * torch.randn(16)  # two near copies
    features[250] = features[10] * 3  # the same direction: similarity 1
    whole = D.similar_pairs(features, 0.95)
    monkeypatch.setattr(D, "BLOCK_BYTES", 4 * 300 * 7)  # 7 rows at a time
    blocks = D.similar_pairs(features, 0.95)
    assert [p[:2] for p in blocks] == [p[:2] for p in whole]
    assert [p[2] for p in blocks] == pytest.approx([p[2] for p in whole], abs=1e-5)
    assert {(a, b) for a, b, _ in whole} == {(10, 200), (10, 250), (200, 250)}
    assert [s for _, _, s in whole] == sorted([s for _, _, s in whole], reverse=True)  # most alike first
    assert D.similar_pairs(features, 0.95, exclude={(10, 250)}) == [p for p in whole if p[:2] != (10, 250)]


def test_the_calibration_copy_is_resized_reencoded_and_mirrored():
    pixels = np.zeros((60, 100, 3), np.uint8)
    pixels[:, :20] = 255  # a white band on the left
    copy = D.calibration_copy(Image.fromarray(pixels))
    assert copy.size == (80, 48) and copy.mode == "RGB"
    copy = np.asarray(copy)
    assert copy[:, -10:].mean() > 200 and copy[:, :10].mean() < 30  # now on the right


@pytest.mark.parametrize("size", [64, 224])  # every pixel read; every second one
def test_thumbnails_match_a_mirrored_copy_and_not_another_photo(size):
    from helpers.datasets import photo

    images = [np.asarray(photo(i, (size, size))) for i in range(4)]
    copy = np.asarray(D.calibration_copy(Image.fromarray(images[0])).resize((size, size)))
    _, stds, thumbs = D.pixel_summary(np.stack([*images, copy, np.full((size, size, 3), 90, np.uint8)]), range(6))
    same = D.thumbnail_similarity(thumbs[[0]], thumbs[[4]])
    others = D.thumbnail_similarity(thumbs[[0, 0, 0]], thumbs[[1, 2, 3]])
    assert float(same) > 0.97 and float(others.max()) < 0.9
    assert stds[5] == 0 and stds[:5].min() > 10  # the blank one


def test_training_after_an_audit_computes_no_features_again(tiny, tmp_path: Path, monkeypatch):
    from headstart.auditing.audit import audit
    from headstart.models.timm_backbones import TimmBody
    from headstart.training.fit import fit
    from helpers.datasets import TINY_OPTIONS

    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))  # nothing kept by an earlier test
    seen = []
    forward = TimmBody.forward
    monkeypatch.setattr(TimmBody, "forward", lambda self, x: (seen.append(len(x)), forward(self, x))[1])
    audit(tiny, input_size=32, out_dir=tmp_path / "audit")
    assert sum(seen) > 0
    seen.clear()
    fit(tiny, strategy="features", epochs=1, runs_dir=tmp_path, name="after", **TINY_OPTIONS)
    assert sum(seen) == 0  # the audit's features, read from disk


def test_a_class_of_one_photo_is_audited_without_judging_labels(tmp_path: Path, caplog):
    from headstart.auditing.audit import audit

    rows = [["path", "label", "split"]]
    for split, per_class in (("training", 6), ("validation", 2), ("evaluation", 2)):
        for cid, name in CLASSES.items():
            files = sorted((demo_root() / split).glob(f"{cid}_*.png"))[
                : (1 if name == "Bag" and split == "training" else per_class)
            ]
            rows += [[str(f), name, split] for f in files if not (name == "Bag" and split != "training")]
    with open(tmp_path / "few.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = load_dataset(tmp_path / "few.csv", allow_outside_root=True)
    found = audit(ds, "test_efficientnet", "none", 32, tmp_path / "audit")
    assert found.label_issues == [] and "class 'Bag' has 1 image" in caplog.text
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["counts"]["label_issues"] == 0
