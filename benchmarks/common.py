"""Timing and peak-memory helpers shared by the benchmark scripts.

Each measured configuration runs in its own child process so that its peak memory is its own: on CUDA
the peak of ``torch.cuda.max_memory_allocated`` above the memory held before the first step, on CPU the
growth of the process's peak resident set size (``ru_maxrss``) above the resident size before the first
step (activations, gradients and the allocator's caches).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[], None], device: torch.device, *, warmup: int = 1, repeats: int = 5) -> dict:
    """Median wall time of ``step`` and its peak memory above the memory held before the first call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = current_rss_mb()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = peak_rss_mb() - base
    return {"median_s": statistics.median(times), "peak_mb": peak, "times_s": times}


def run_child(script: str, args: list[str]) -> dict:
    """Runs ``script --child ARGS`` in a fresh interpreter and returns the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, script, "--child", *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def environment() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads"
