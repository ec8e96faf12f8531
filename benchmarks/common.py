"""Timing and peak-memory helpers shared by the benchmark scripts.

Each measured configuration runs in its own child process so that its peak memory is its own: on CUDA
the peak of ``torch.cuda.max_memory_allocated`` above the memory held before the first step, on CPU the
growth of the process's peak resident set size (``ru_maxrss``) above the resident size before the first
step (activations, gradients and the allocator's caches).
"""

from __future__ import annotations

import argparse
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


def memory_mark(device: torch.device, *, after_peak: bool = False) -> float:
    """A baseline (MB) for :func:`peak_above`.

    CUDA: resets the peak counter and returns the memory allocated now. CPU: the resident size now, or
    with ``after_peak`` the peak so far (so that an earlier part's peak is not counted again).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return peak_rss_mb() if after_peak else current_rss_mb()


def peak_above(mark: float, device: torch.device) -> float:
    """Peak memory (MB) since :func:`memory_mark` above its baseline."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - mark
    return peak_rss_mb() - mark


def measure(step: Callable[[], None], device: torch.device, *, warmup: int = 1, repeats: int = 5) -> dict:
    """Median wall time of ``step`` and its peak memory above the memory held before the first call."""
    mark = memory_mark(device)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "peak_mb": peak_above(mark, device), "times_s": times}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks."""


def add_common_arguments(parser, *, batch: int, repeats: int) -> None:
    """The options both benchmarks take, and the hidden ones their child processes get."""
    parser.add_argument("--model", default="deit_tiny_patch16_224", help="timm ViT name")
    parser.add_argument("--size", type=int, default=448, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=batch, help="images per step")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where it runs"
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["fast", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--ratio", type=float, help=argparse.SUPPRESS)


def child_arguments(args, names: tuple[str, ...] = ()) -> list[str]:
    """The command line that passes the common options (and ``names``) on to a child process."""
    keys = ("model", "size", "batch", "device", "repeats", "warmup", "threads", *names)
    return [f"--{key}={getattr(args, key)}" for key in keys] + (["--amp"] if args.amp else [])


def run_child(script: str, args: list[str]) -> dict:
    """Runs ``script --child ARGS`` in a fresh interpreter and returns the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, script, "--child", *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def environment() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads"
