"""One full MCC training step: the fast computation vs the plain (published) one.

A step = the labels (no gradient: multi-scale CAMs, key masks, positiveness, affinity token labels, PAR
pseudo label; ``MCCNet.make_labels``, the same code in both computations) + the part with gradient
(forward, backward, AdamW step), which is where the exact shortcuts apply.

* Time: one process per ratio runs, in every iteration, the labels, the fast gradient part and the plain
  gradient part back to back, so slow drift of a shared machine hits both computations alike. Reported:
  medians, and the median of the per-iteration ratios. A whole step = labels + gradient part.
* Peak memory: each part of each computation once in a fresh process (see ``common.py``).

Ends with one JSON line.

    python benchmarks/train_step.py                         # deit_tiny at 448, batch 1, CPU
    python benchmarks/train_step.py --model deit_base_patch16_224 --device cuda --amp   # the paper's setting
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import timm
import torch
from common import (
    HelpFormatter,
    add_common_arguments,
    child_arguments,
    environment,
    memory_mark,
    peak_above,
    run_child,
    synchronize,
)

from mcc.network import MCCConfig, MCCNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def setup(args: argparse.Namespace, ratio: float):
    torch.manual_seed(0)
    device = torch.device(args.device)
    vit = timm.create_model(args.model, pretrained=False, img_size=args.size)
    net = MCCNet(vit, num_classes=20, config=MCCConfig.released(mask_ratio=ratio)).to(device).train()
    # The fused AdamW kernel (CPU and CUDA, torch >= 2.4) in both computations; foreach where it is missing.
    try:
        optimizer = torch.optim.AdamW(net.param_groups(), lr=6e-5, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(net.param_groups(), lr=6e-5, foreach=True)
    g = torch.Generator().manual_seed(2)
    shape = (args.batch, 3, args.size, args.size)
    x, v1, v2 = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    cls_label = torch.zeros(args.batch, 20, device=device)
    cls_label[:, [0, 7, 14]] = 1
    img_box = torch.tensor([[0, args.size, 0, args.size]] * args.batch, device=device)
    generator = torch.Generator().manual_seed(1)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp)

    def labels():
        with torch.autocast(**amp):
            return net.make_labels(x, cls_label, img_box, 13000, generator=generator)

    def grad_part(made, fast: bool):
        with torch.autocast(**amp):
            losses = net.training_losses(x, v1, v2, cls_label, img_box, 13000, fast=fast, labels=made)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()

    return device, labels, grad_part


def timed(fn, device):
    """``(seconds, fn())``."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def time_child(args: argparse.Namespace) -> dict:
    device, labels, grad_part = setup(args, args.ratio)
    made = labels()
    for _ in range(args.warmup):
        grad_part(made, True)
        grad_part(made, False)
    rows = []
    for _ in range(args.repeats):
        label_s, made = timed(labels, device)
        fast_s, _ = timed(functools.partial(grad_part, made, True), device)
        plain_s, _ = timed(functools.partial(grad_part, made, False), device)
        rows.append((label_s, fast_s, plain_s))
    return {"rows": rows}


def memory_child(args: argparse.Namespace) -> dict:
    device, labels, grad_part = setup(args, args.ratio)
    if args.part == "labels":
        mark = memory_mark(device)
        labels()
    else:
        made = labels()
        # The labels' own peak is not counted: it is measured by the "labels" child.
        mark = memory_mark(device, after_peak=True)
        grad_part(made, args.path == "fast")
    return {"peak_mb": peak_above(mark, device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_arguments(parser, batch=1, repeats=7)
    parser.add_argument(
        "--ratios", type=float, nargs="+", default=[0.75, 0.95], help="key-mask ratios to measure"
    )
    parser.add_argument("--part", choices=["time", "labels", "grad"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(time_child(args) if args.part == "time" else memory_child(args)))
        return

    shared = child_arguments(args)
    print(
        f"MCC training step: {args.model} at {args.size}, batch {args.batch}, 8 masked views, "
        f"{'bf16 autocast' if args.amp else 'float32'}, {args.repeats} interleaved repeats; {environment()}"
    )
    header = ("ratio", "part", "plain s", "fast s", "speedup", "plain MB", "fast MB")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (5, 6, 8, 8, 8, 9, 9))))
    summary = {"benchmark": "train_step", "model": args.model, "size": args.size, "batch": args.batch,
               "device": args.device, "amp": args.amp}  # fmt: skip
    for ratio in args.ratios:
        rows = run_child(__file__, shared + ["--part=time", f"--ratio={ratio}"])["rows"]
        memory = {
            (part, path): run_child(
                __file__, shared + [f"--part={part}", f"--path={path}", f"--ratio={ratio}"]
            )
            for part, path in (("labels", "fast"), ("grad", "plain"), ("grad", "fast"))
        }
        memory = {key: value["peak_mb"] for key, value in memory.items()}
        labels_s = statistics.median(r[0] for r in rows)
        times = {
            "labels": (labels_s, labels_s, 1.0),
            "grad": (
                statistics.median(r[2] for r in rows),
                statistics.median(r[1] for r in rows),
                statistics.median(r[2] / r[1] for r in rows),
            ),
            "step": (
                statistics.median(r[0] + r[2] for r in rows),
                statistics.median(r[0] + r[1] for r in rows),
                statistics.median((r[0] + r[2]) / (r[0] + r[1]) for r in rows),
            ),
        }
        peaks = {
            "labels": (memory[("labels", "fast")],) * 2,
            "grad": (memory[("grad", "plain")], memory[("grad", "fast")]),
        }
        peaks["step"] = tuple(max(peaks["labels"][i], peaks["grad"][i]) for i in range(2))
        for part, (plain_s, fast_s, speedup) in times.items():
            plain_mb, fast_mb = peaks[part]
            print(
                f"{ratio:>5.2f} {part:>6} {plain_s:>8.3f} {fast_s:>8.3f} {speedup:>7.2f}x "
                f"{plain_mb:>9.1f} {fast_mb:>9.1f}"
            )
            prefix = f"ratio_{ratio}_" if part == "step" else f"ratio_{ratio}_{part}_"
            summary[prefix + "speedup"] = round(speedup, 2)
            summary[prefix + "plain_s"] = round(plain_s, 3)
            summary[prefix + "fast_s"] = round(fast_s, 3)
            summary[prefix + "plain_mb"] = round(plain_mb, 1)
            summary[prefix + "fast_mb"] = round(fast_mb, 1)
            if part != "labels":
                summary[prefix + "memory"] = round(fast_mb / max(plain_mb, 1e-9), 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
