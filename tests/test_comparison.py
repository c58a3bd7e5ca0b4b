"""Compare: the tutorial's experiment, several strategies on the same data and seed, one report."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from headstart import comparison as comparison
from headstart.cli.main import app
from headstart.comparison import compare, reading
from headstart.errors import ConfigError
from headstart.runs.folder import Run
from helpers.browser import render_report


def test_compare_table_matches_the_runs_and_renders(messy: Path, tmp_path: Path):
    result = compare(
        messy, ["features", "full", "scratch"], epochs=2, input_size=32, runs_dir=str(tmp_path), name="cmp"
    )
    with (result.dir / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["features", "full", "scratch"]
    for row in rows:
        m = json.loads((result.dir / row["strategy"] / "metrics.json").read_text())
        assert (float(row["accuracy"]), int(row["correct"]), int(row["total"])) == (
            m["accuracy"],
            m["correct"],
            m["total"],
        )
        assert int(row["trainable"]) == m["trainable_params"]
        # features searched its head (the one it trained is named); full and scratch have no search
        assert row["head"] == (m["head_search"]["chosen"] if row["strategy"] == "features" else "")
        assert (result.dir / row["strategy"] / "report.html").is_file()
    best = max(result.rows, key=lambda r: (r["accuracy"], -r["total_seconds"]))
    assert result.reading.startswith(f"{best['strategy']} reached the best evaluation accuracy")
    assert "random weights" in result.reading or best["strategy"] == "scratch"
    page = render_report(result.report, tmp_path / "compare-report.png", tmp_path)
    assert page["errors"] == [] and len(page["images"]) == 2
    assert all(ok and w > 300 for _, ok, w, _ in page["images"])
    assert result.reading[:40] in page["text"]
    assert "No audit of this data yet: headstart audit DATA" in page["text"]  # none in runs/ for this data
    # The title names the data (not the last strategy): the messy dataset's folder.
    assert page["text"].startswith(f"efficientnet_lite0 on {messy.name}: features, full, scratch"), page["text"][:80]


def test_compare_gives_a_freeze_point_only_to_the_strategies_that_have_one(messy: Path, tmp_path: Path):
    result = compare(
        messy,
        ["features", "half"],
        freeze="1",
        epochs=1,
        input_size=32,
        runs_dir=str(tmp_path),
        name="cmp",
        advise=False,
    )
    assert result.runs["half"].config.freeze == "1" and result.runs["features"].config.freeze is None
    assert result.advice is None and "advised" not in (result.dir / "report.html").read_text()
    with pytest.raises(ConfigError, match="--freeze sets the freeze point of half or partial"):
        compare(messy, ["features", "full"], freeze="1", runs_dir=str(tmp_path), name="cmp2")


def test_compare_rejects_unknown_strategies_before_training(tmp_path: Path):
    with pytest.raises(ConfigError, match="Unknown strategy 'most'"):
        compare("demo", ["features", "most"], runs_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_an_interrupted_comparison_stops_and_says_what_to_resume(tiny, tmp_path: Path, monkeypatch):
    trained = []

    def interrupted_fit(data, **options):  # Ctrl-C during the second strategy
        run = Run(Path(options["runs_dir"]) / options["name"], None, interrupted=len(trained) == 1)
        trained.append(options["strategy"])
        return run

    monkeypatch.setattr(comparison, "fit", interrupted_fit)
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(tiny),
            "--strategies",
            "features,half,full",
            "--no-advise",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "cmp",
        ],
    )
    assert result.exit_code == 130, result.output
    assert trained == ["features", "half"]  # full never started
    assert f"headstart train --resume {tmp_path / 'cmp' / 'half'}" in " ".join(result.output.split())
    assert not (tmp_path / "cmp" / "report.html").exists()


def test_one_comparison_shows_a_lever_side_by_side(tiny, tmp_path: Path):
    from headstart.auditing.audit import audit

    audit(tiny, input_size=32, out_dir=tmp_path / "audit-tiny")  # the data's audit, which the report links
    result = CliRunner().invoke(
        app,
        [
            "compare",
            str(tiny),
            "--strategies",
            "features,features+input_size=48+head_dropout=0",
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "cmp",
            "--no-advise",
        ],
    )
    assert result.exit_code == 0, result.output
    assert 'href="../audit-tiny/audit.html"' in (tmp_path / "cmp" / "report.html").read_text()
    with (tmp_path / "cmp" / "comparison.csv").open() as f:
        assert [r["strategy"] for r in csv.DictReader(f)] == ["features", "features+input_size=48+head_dropout=0"]
    plain, varied = (
        Run.load(tmp_path / "cmp" / "features"),
        Run.load(tmp_path / "cmp" / "features+input_size=48+head_dropout=0"),
    )
    assert (plain.config.input_size, plain.config.head_dropout) == (32, 0.2)
    assert (varied.config.input_size, varied.config.head_dropout, varied.config.strategy) == (48, 0.0, "features")
    for bad, said in (
        ("features+colour=blue", "'colour=blue' in 'features+colour=blue' is not a training option"),
        ("features+epochs=0", "epochs"),
        ("most+tta", "Unknown strategy 'most' in 'most+tta'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            compare(tiny, ["features", bad], runs_dir=str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_the_reading_of_a_comparison_of_one_run_or_only_scratch_runs():
    row = {
        "strategy": "scratch",
        "accuracy": 0.2,
        "correct": 1,
        "total": 5,
        "total_seconds": 1.0,
        "seconds_per_epoch": 1.0,
    }
    assert reading([row]) == "scratch reached the best evaluation accuracy, 20.0% (1 of 5 images)."


def test_the_reading_of_two_runs_of_one_strategy_names_no_speed_up():
    row = dict(correct=1, total=5, total_seconds=1.0, seconds_per_epoch=0.2)
    rows = [{**row, "strategy": "features", "accuracy": 0.6}, {**row, "strategy": "features+lr=0.01", "accuracy": 0.8}]
    text = reading(rows)
    assert text.startswith("features+lr=0.01 reached the best evaluation accuracy, 80.0%") and "faster" not in text
