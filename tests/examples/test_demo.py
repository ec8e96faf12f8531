"""The CPU demo, shortened: refined pseudo labels beat the raw CAM labels on the synthetic VOC."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_short_demo_learns_and_compares_cams_with_pseudo_labels(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import demo

    args = ["--work-dir", str(tmp_path), "--steps", "300", "--num-train", "240", "--num-val", "30"]
    results = demo.main(args)
    # a from-scratch ViT learns the synthetic set: far above the all-background labelling (13.3 mIoU)
    assert results["cam@0.50"] > 0.4 and results["pseudo"] > 0.4 and results["seg"] > 0.25
    assert results["total_s"] < 300
    # PAR refinement makes clearly better labels than the raw CAM at the same threshold (issue: data).
    assert results["pseudo"] > results["cam@0.50"] + 0.05
    # The three-way training target is precise where it commits, on most of the image.
    assert results["pseudo_train"] > results["pseudo"] and results["pseudo_train_coverage"] > 0.5
