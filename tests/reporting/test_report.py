"""Reports: self-contained HTML that renders in a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

from headstart.training.fit import fit
from helpers.browser import render_report


def test_run_report_renders_with_every_image(demo_run, tmp_path: Path):
    report = demo_run.dir / "report.html"
    html = report.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained, no network
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3  # curves, confusion, misclassified
    page = render_report(report, tmp_path / "run-report.png", tmp_path)
    assert page["errors"] == []
    assert len(page["images"]) == 3 and all(ok and w > 300 and h > 200 for _, ok, w, h in page["images"]), page[
        "images"
    ]
    m = demo_run.metrics
    assert f"{m['correct']} / {m['total']}" in page["text"]
    assert f"{100 * m['accuracy']:.1f} %" in page["text"]
    assert "T-shirt/top" in page["text"] and "Most confused" in page["text"]
    assert (tmp_path / "run-report.png").stat().st_size > 50_000


def test_run_report_lists_skipped_images(messy: Path, tmp_path: Path):
    run = fit(messy, strategy="features", epochs=2, input_size=32, runs_dir=tmp_path / "runs", name="messy")
    html = (run.dir / "report.html").read_text()
    assert "1 unreadable image(s) skipped" in html
    assert str(messy / "training" / "1_90.jpg") in html
    assert json.loads((run.dir / "data.json").read_text())["problems"][0]["path"].endswith("1_90.jpg")
