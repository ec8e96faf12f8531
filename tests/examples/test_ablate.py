"""The ablation harness, tiny: two arms, one seed; files written, resume skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_two_arm_ablation_writes_results_and_resumes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import ablate

    standin = tmp_path / "standin.pt"
    args = [
        "--out", str(tmp_path / "ablation"), "--arms", "base,mcc", "--seeds", "0", "--steps", "10",
        "--num-train", "16", "--num-val", "4", "--standin", str(standin),
        "--standin-args", "--steps 5 --num-train 64 --num-val 16 --batch-size 8",
    ]  # fmt: skip
    results = ablate.main(args)
    out = tmp_path / "ablation"
    assert standin.is_file() and (out / "ablation.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert "`base`" in table and "`mcc`" in table and "all-background" in table
    stored = json.loads((out / "results.json").read_text())
    assert stored["arms"].keys() == {"base", "mcc"} and len(stored["runs"]) == 2
    for name in ("base", "mcc"):
        for metric in ablate.METRICS:
            value = stored["arms"][name]["miou"][metric]
            assert 0 <= value["mean"] <= 100 and value["n"] == 1 and value["std"] == 0
    # the paired difference is the difference of the two runs of seed 0
    runs = {r["arm"]: r for r in stored["runs"]}
    delta = stored["arms"]["mcc"]["difference"]["seg"]["mean"]
    assert delta == pytest.approx(runs["mcc"]["miou"]["seg"] - runs["base"]["miou"]["seg"])
    assert runs["base"]["config"]["w_mcc"] == 0 and runs["mcc"]["config"]["w_mcc"] == 0.5
    assert 0 < stored["background_miou"] < 30
    assert stored["shared_config"]["mask_scale"] == 1  # the runs share everything but the arms' fields
    assert results["arms"] == stored["arms"]

    # resume: nothing is run again, the per-run files are untouched
    run_file = ablate.run_path(out, "mcc", 0)
    before = run_file.stat().st_mtime_ns
    again = ablate.main(args)
    assert run_file.stat().st_mtime_ns == before
    assert again["arms"] == stored["arms"]


def test_arms_differ_from_their_reference_in_one_thing():
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        import ablate
    finally:
        sys.path.remove(str(EXAMPLES))
    for name, arm in ablate.ARMS.items():
        config = ablate.base_config(400, **arm.overrides)
        if arm.reference is None:
            assert config.w_mcc == 0
            continue
        reference = ablate.ARMS[arm.reference]
        assert reference.pretrained == arm.pretrained or not arm.overrides.keys() - {"w_mcc"}
        assert config != ablate.base_config(400, **reference.overrides), name
    assert ablate.base_config(400, mcc_warmup_steps=-1).mcc_warmup_steps == 200
    assert ablate.ARMS["mcc_warmup"].overrides == {"mcc_warmup_steps": -1}  # not mutated by base_config
