"""benchmarks/gpu_check.py (``make gpu-check``): its dry run starts every command it would run, and
without CUDA it runs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CHECKS = {"pytest_cuda", "train_step_bf16", "train_step_fp32", "crf", "rloss", "par", "masked_views"}


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True, text=True
    )


def test_without_cuda_it_says_so_in_one_line_and_runs_nothing(tmp_path):
    done = _run("--out", str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    assert json.loads(line) == {
        "check": "gpu_check",
        "cuda": False,
        "message": "no CUDA device: nothing was run",
    }
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dry_run_starts_every_check(tmp_path):
    done = _run("--dry-run", "--out", str(tmp_path), CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert {r["check"] for r in records} == CHECKS | {"train_step_dry_run"}
    assert all(r["ok"] and r["dry_run"] for r in records), records
    assert next(r for r in records if r["check"] == "pytest_cuda")["cuda_tests_collected"] > 0
    assert (tmp_path / "dry_run.jsonl").read_text().splitlines() == done.stdout.strip().splitlines()


def test_parse_only_reports_an_option_the_benchmark_does_not_take(tmp_path):
    from importlib import util

    spec = util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    runs = [["good", ["benchmarks/par.py", "--device", "cuda"]], ["bad", ["benchmarks/par.py", "--no-such"]]]
    done = subprocess.run(
        [sys.executable, "-c", gpu_check.PARSE_ONLY, json.dumps(runs)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    results = {r["check"]: r for r in map(json.loads, done.stdout.strip().splitlines())}
    assert results["good"]["parsed"] and results["good"]["options"]["device"] == "cuda"
    assert not results["bad"]["parsed"] and "exit status 2" in results["bad"]["error"]
    assert "unrecognized arguments: --no-such" in done.stderr


def test_schedule_estimate_from_a_train_step_line():
    from importlib import util

    spec = util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    line = {"ratio_0.95_fast_s": 0.36, "ratio_0.95_plain_s": 1.08, "ratio_0.95_fast_mb": 9000.0}
    estimate = gpu_check.schedule_estimate(line)
    assert estimate["fast_voc_schedule_hours"] == 2.0 and estimate["plain_voc_schedule_hours"] == 6.0
    assert estimate["published_gpu_hours"] == 10.93 and estimate["published_over_fast_gpu_hours"] == 5.46
    assert estimate["fast_peak_mb"] == 9000.0
