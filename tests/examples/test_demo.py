"""The CPU demo, shortened: refined pseudo labels beat the raw CAM labels on the synthetic VOC."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_short_demo_pseudo_labels_beat_cams(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import demo

    results = demo.main(
        ["--work-dir", str(tmp_path), "--steps", "300", "--num-train", "240", "--num-val", "30"]
    )
    assert results["pseudo"] > results["cam_best"] > 0.3
    assert results["total_s"] < 300
