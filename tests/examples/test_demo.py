"""The CPU demo: its files (metrics.json, samples.png), and, shortened, that refined labels beat raw CAMs."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcc.cli import demo
from mcc.data import VOCSegmentation

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUIRED = (
    "cam_miou",
    "cam_best_miou",
    "pseudo_label_miou",
    "pseudo_train_miou",
    "pseudo_train_coverage",
    "seg_miou",
    "baseline_background_miou",
    "iterations",
    "wall_time_s",
)


def background_miou_from_pngs(root: Path) -> float:
    """mIoU (%) of an all-background labelling, from the written validation masks."""
    dataset = VOCSegmentation(root, "val")
    inter = np.zeros(dataset.num_classes)
    union = np.zeros(dataset.num_classes)
    for image_id in dataset.ids:
        mask = np.array(Image.open(dataset.data.mask_path(image_id)))
        valid = mask != 255
        for c in range(dataset.num_classes):
            truth = (mask == c) & valid
            predicted = valid if c == 0 else np.zeros_like(valid)
            inter[c] += (truth & predicted).sum()
            union[c] += (truth | predicted).sum()
    present = union > 0
    return 100 * float((inter[present] / union[present]).mean())


def check_outputs(out_dir: Path, work_dir: Path, results: dict, num_samples: int, zoom: int, size: int):
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(results))  # what main returns is what it wrote
    for key in REQUIRED:
        assert isinstance(metrics[key], int | float), key
    scores = metrics["scores"]
    assert metrics["cam_miou"] == pytest.approx(scores["cam@0.50"]["miou"])
    assert metrics["cam_best_miou"] == pytest.approx(max(s["miou"] for k, s in scores.items() if "@" in k))
    assert metrics["pseudo_label_miou"] == pytest.approx(scores["pseudo"]["miou"])
    assert metrics["pseudo_train_miou"] == pytest.approx(scores["pseudo_train"]["miou"])
    assert metrics["pseudo_train_coverage"] == pytest.approx(scores["pseudo_train"]["coverage"])
    assert metrics["seg_miou"] == pytest.approx(scores["seg"]["miou"])
    root = work_dir / "synthetic"
    assert metrics["baseline_background_miou"] == pytest.approx(background_miou_from_pngs(root))
    assert 0 < metrics["wall_time_s"] and metrics["train_time_s"] <= metrics["wall_time_s"]
    # samples.png: a title row above num_samples rows of five zoomed panels
    with Image.open(out_dir / "samples.png") as picture:
        width, height = picture.size
        assert picture.mode == "RGB"
    cell, pad = size * zoom, 2 * zoom
    assert width == 5 * (cell + pad) + pad
    rows_height = num_samples * (cell + pad) + pad
    assert rows_height < height < rows_height + 4 * cell


def test_tiny_demo_writes_metrics_and_samples(tmp_path, capsys):
    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    args = ["--out-dir", str(out_dir), "--work-dir", str(work_dir), "--steps", "2", "--batch-size", "2"]
    args += ["--num-train", "4", "--num-val", "3", "--num-samples", "2", "--zoom", "1", "--size", "32"]
    args += ["--dim", "32", "--depth", "3", "--heads", "2", "--log-every", "1"]
    results = demo.run(args)
    assert results["iterations"] == 2
    check_outputs(out_dir, work_dir, results, num_samples=2, zoom=1, size=32)
    assert "samples.png" in capsys.readouterr().out


def test_demo_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--num-samples"):
        demo.run(["--out-dir", str(tmp_path), "--num-val", "3", "--num-samples", "4"])


def test_examples_demo_is_a_wrapper(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["demo.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLES / "demo.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "runs/demo" in capsys.readouterr().out


@pytest.mark.slow
def test_short_demo_learns_and_compares_cams_with_pseudo_labels(tmp_path):
    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    args = ["--out-dir", str(out_dir), "--work-dir", str(work_dir)]
    args += ["--steps", "300", "--num-train", "240", "--num-val", "30"]
    results = demo.run(args)
    check_outputs(out_dir, work_dir, results, num_samples=4, zoom=2, size=64)
    # a from-scratch ViT learns the synthetic set: far above the all-background labelling (about 13 mIoU)
    baseline = results["baseline_background_miou"]
    assert results["cam_miou"] > max(40, baseline + 20) and results["pseudo_label_miou"] > 40
    assert results["seg_miou"] > 25
    assert results["wall_time_s"] < 600  # a bound for a loaded machine (262 s with load 16 on 2 cores)
    # PAR refinement makes clearly better labels than the raw CAM at the same threshold (issue: data).
    assert results["pseudo_label_miou"] > results["cam_miou"] + 5
    # The three-way training target is precise where it commits, on most of the image.
    assert results["pseudo_train_miou"] > results["pseudo_label_miou"]
    assert results["pseudo_train_coverage"] > 50
