"""Every CUDA measurement the docs promise, in one run on one GPU (``make gpu-check``), under 8 minutes.

Runs, one after the other, each with its own time limit inside a total budget (``--budget``, 460 s):

* ``pytest_cuda``: the test suite's CUDA tests (``pytest -m cuda``; the rest of the suite is unchanged);
* ``train_step_bf16`` and ``train_step_fp32``: the training step fast vs plain, DeiT-B at 448, batch 4,
  key-mask ratio 0.95, bf16 autocast / float32 (``benchmarks/train_step.py``): seconds per step, peak
  memory, and from them the estimated wall time of the published VOC schedule (20000 steps of 4 images)
  on this GPU, next to the published run (2 h 44 min on 4 A100, one image per GPU: about 10.9 GPU-hours);
* ``crf``: the dense CRF per image, torch on CUDA at batch 1 and ``--batch`` 8 against pydensecrf2 on this
  machine's CPU (``benchmarks/crf.py``);
* ``rloss``: the regularised loss (the bilateral filter) in a DeiT-B step on CUDA (``benchmarks/rloss.py``);
* ``par``: PAR and the pseudo label on CUDA (``benchmarks/par.py``);
* ``masked_views``: the masked views, DeiT-B at 448, bf16 (``benchmarks/masked_views.py``).

Prints one JSON line per measurement (the benchmark's own last line, plus ``check``, ``command``,
``seconds``, ``returncode``) and writes each to ``--out`` (``runs/gpu-check/``): ``<check>.json``, the
benchmark's whole output ``<check>.log``, and ``results.jsonl`` with every line. Exit status 1 if a check
failed or ran out of time, else 0.

Without CUDA it prints one line saying so and exits 0, running nothing. ``--dry-run`` runs nothing either,
on any machine: it starts every benchmark with the exact options it would use and stops each right after
parsing them (imports and options checked), runs ``train_step.py --dry-run`` (every part of the step once
on a tiny CPU model) and collects the CUDA tests.

    python benchmarks/gpu_check.py              # make gpu-check
    python benchmarks/gpu_check.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VOC_STEPS = 20000  # the published VOC schedule, 4 images per step
PUBLISHED_GPU_HOURS = round(4 * (2 + 44 / 60), 2)  # 2 h 44 min on 4 A100-40GB


def checks(args: argparse.Namespace) -> list[tuple[str, list[str], int]]:
    """``(name, argv after the interpreter, time limit in s)`` of every measurement, in running order."""
    bench = lambda name: f"benchmarks/{name}.py"  # noqa: E731  (relative to the repository root, the cwd)
    step = [bench("train_step"), "--model", "deit_base_patch16_224", "--size", "448", "--batch", "4",
            "--device", "cuda", "--ratios", "0.95", "--repeats", "3", "--warmup", "2"]  # fmt: skip
    return [
        (
            "pytest_cuda",
            ["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
            200,
        ),
        ("train_step_bf16", [*step, "--amp"], 150),
        ("train_step_fp32", step, 150),
        ("crf", [bench("crf"), "--threads", "1", "--batch", "8", "--repeats", "3"], 120),
        (
            "rloss",
            [
                bench("rloss"),
                "--model",
                "deit_base_patch16_224",
                "--batch",
                "4",
                "--device",
                "cuda",
                "--repeats",
                "3",
            ],
            90,
        ),  # fmt: skip
        ("par", [bench("par"), "--device", "cuda", "--repeats", "3"], 90),
        (
            "masked_views",
            [
                bench("masked_views"),
                "--model",
                "deit_base_patch16_224",
                "--batch",
                "4",
                "--device",
                "cuda",
                "--amp",
                "--ratios",
                "0.75",
                "0.95",
                "--repeats",
                "3",
            ],
            120,
        ),  # fmt: skip
    ]


def last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def pytest_counts(junit: Path) -> dict:
    """Counts of a pytest JUnit XML report."""
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**counts, "failed_tests": failed[:20]}


def schedule_estimate(result: dict) -> dict:
    """Seconds per step, peak memory and the estimated VOC schedule of a train_step result (ratio 0.95)."""
    out = {}
    for path in ("fast", "plain"):
        seconds = result.get(f"ratio_0.95_{path}_s")
        if seconds is None:
            continue
        out[f"{path}_s_per_step"] = seconds
        out[f"{path}_peak_mb"] = result.get(f"ratio_0.95_{path}_mb")
        out[f"{path}_voc_schedule_hours"] = round(seconds * VOC_STEPS / 3600, 2)
    if "fast_voc_schedule_hours" in out:
        out["published_gpu_hours"] = PUBLISHED_GPU_HOURS
        out["published_over_fast_gpu_hours"] = round(PUBLISHED_GPU_HOURS / out["fast_voc_schedule_hours"], 2)
    return out


def run_check(name: str, argv: list[str], limit: float, out: Path, env: dict) -> dict:
    command = [sys.executable, *argv]
    if name == "pytest_cuda":
        command.append(f"--junitxml={out / 'pytest_cuda.xml'}")
    start = time.perf_counter()
    record: dict = {"check": name}
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(limit, 1)
        )
        log, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as error:
        log = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        returncode = None
        record["error"] = f"timed out after {limit:.0f} s"
    write_atomic(out / f"{name}.log", log)
    if name == "pytest_cuda":
        junit = out / "pytest_cuda.xml"
        if junit.exists():
            record.update(pytest_counts(junit))
        # pytest exits 5 when nothing was collected: not a failure of the check
        ok = returncode in (0, 5)
    else:
        result = last_json(log) if returncode == 0 else None
        ok = result is not None
        if result is not None:
            record.update(result)
            if name.startswith("train_step"):
                record.update(schedule_estimate(result))
        elif "error" not in record:
            record["error"] = f"exit status {returncode}; the last lines: " + " | ".join(
                log.splitlines()[-3:]
            )
    record.update(
        ok=ok, returncode=returncode, seconds=round(time.perf_counter() - start, 1), command=" ".join(argv)
    )
    return record


PARSE_ONLY = """
import argparse, json, os, runpy, sys
class Parsed(Exception):
    pass
def stop(self, args=None, namespace=None):
    raise Parsed(vars(original(self, args, namespace)))
original = argparse.ArgumentParser.parse_args
argparse.ArgumentParser.parse_args = stop
for name, argv in json.loads(sys.argv[1]):
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    try:
        runpy.run_path(argv[0], run_name="__main__")
        result = {"check": name, "parsed": False, "error": "the script ended without parsing options"}
    except Parsed as parsed:
        result = {"check": name, "parsed": True, "options": parsed.args[0]}
    except SystemExit as error:  # argparse refused the options (its message is on stderr)
        result = {"check": name, "parsed": False, "error": f"exit status {error.code}"}
    print(json.dumps(result, default=str), flush=True)
"""


def dry_run(args: argparse.Namespace, out: Path, env: dict) -> int:
    """Starts every check's command without running it; one JSON line per check."""
    lines = []

    def report(record: dict, start: float) -> None:
        record.update(dry_run=True, seconds=round(time.perf_counter() - start, 1))
        lines.append(json.dumps(record))
        print(lines[-1], flush=True)

    scripts = [(name, argv) for name, argv, _ in checks(args) if name != "pytest_cuda"]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, json.dumps(scripts)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    parsed = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            parsed[result["check"]] = result
    for name, argv in scripts:
        result = parsed.get(name, {"parsed": False, "error": _tail(done.stdout + done.stderr)})
        record = {"check": name, "ok": bool(result["parsed"]), "command": " ".join(argv)}
        if not result["parsed"]:
            record["error"] = result["error"]
        report(record, start)

    for name, argv in (
        ("pytest_cuda", [*checks(args)[0][1], "--collect-only"]),
        ("train_step_dry_run", ["benchmarks/train_step.py", "--dry-run", "--threads", "1"]),
    ):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        record = {"check": name, "ok": done.returncode == 0, "command": " ".join(argv)}
        if name == "pytest_cuda":
            record["cuda_tests_collected"] = sum("::" in line for line in done.stdout.splitlines())
            record["ok"] = record["ok"] and record["cuda_tests_collected"] > 0
        if not record["ok"]:
            record["error"] = f"exit status {done.returncode}: {_tail(done.stdout + done.stderr)}"
        report(record, start)
    write_atomic(out / "dry_run.jsonl", "\n".join(lines) + "\n")
    return 0 if all(json.loads(line)["ok"] for line in lines) else 1


def _tail(log: str) -> str:
    return " | ".join(log.strip().splitlines()[-3:])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "runs" / "gpu-check"),
        help="folder for the results (default: %(default)s)",
    )
    parser.add_argument(
        "--budget", type=float, default=460.0, help="seconds for all checks together (default: %(default)s)"
    )
    parser.add_argument("--dry-run", action="store_true", help="start every benchmark, parse, stop")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    out = Path(args.out)
    if args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        return dry_run(args, out, env)

    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"check": "gpu_check", "cuda": False, "message": "no CUDA device: nothing was run"}))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = start + args.budget
    device = {"check": "device", "name": torch.cuda.get_device_name(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "budget_s": args.budget}  # fmt: skip
    lines = [json.dumps(device)]
    print(lines[-1], flush=True)
    failed = 0
    for name, argv, limit in checks(args):
        left = deadline - time.perf_counter()
        if left < 20:
            record = {"check": name, "ok": False, "error": "not run: the time budget is spent"}
        else:
            record = run_check(name, argv, min(limit, left), out, env)
        failed += not record["ok"]
        lines.append(json.dumps(record))
        print(lines[-1], flush=True)
        write_atomic(out / f"{name}.json", lines[-1] + "\n")
        write_atomic(out / "results.jsonl", "\n".join(lines) + "\n")
    summary = {"check": "summary", "failed": failed, "seconds": round(time.perf_counter() - start, 1)}
    lines.append(json.dumps(summary))
    print(lines[-1])
    write_atomic(out / "results.jsonl", "\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
