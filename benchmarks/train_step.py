"""One full MCC training step: the fast computation vs the plain (published) one.

A step = the labels (no gradient: multi-scale CAMs, key masks, positiveness, affinity token labels, PAR
pseudo label; ``MCCNet.make_labels``) + the part with gradient (forward, backward, AdamW step).
Each part is timed (median) and its peak memory measured in a fresh process, for both computations, at
each masking ratio. Ends with one JSON line.

    python benchmarks/train_step.py                         # deit_tiny at 448, batch 1, CPU
    python benchmarks/train_step.py --model deit_base_patch16_224 --device cuda --amp   # the paper's setting
"""

from __future__ import annotations

import argparse
import json
import os

import timm
import torch
from common import environment, measure, run_child

from mcc.network import MCCConfig, MCCNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    vit = timm.create_model(args.model, pretrained=False, img_size=args.size)
    net = MCCNet(vit, num_classes=20, config=MCCConfig.released(mask_ratio=args.ratio)).to(device).train()
    # The fused AdamW kernel (CPU and CUDA, torch >= 2.4) in both computations; foreach where it is missing.
    try:
        optimizer = torch.optim.AdamW(net.param_groups(), lr=6e-5, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(net.param_groups(), lr=6e-5, foreach=True)
    generator = torch.Generator().manual_seed(1)
    g = torch.Generator().manual_seed(2)
    shape = (args.batch, 3, args.size, args.size)
    x, v1, v2 = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    cls_label = torch.zeros(args.batch, 20, device=device)
    cls_label[:, [0, 7, 14]] = 1
    img_box = torch.tensor([[0, args.size, 0, args.size]] * args.batch, device=device)
    fast = args.path == "fast"
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp)

    def labels():
        with torch.autocast(**amp):
            return net.make_labels(x, cls_label, img_box, 13000, generator=generator)

    fixed_labels = labels()

    def grad_part(precomputed=fixed_labels):
        with torch.autocast(**amp):
            losses = net.training_losses(x, v1, v2, cls_label, img_box, 13000, fast=fast, labels=precomputed)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()

    if args.part == "labels":
        return measure(labels, device, warmup=args.warmup, repeats=args.repeats)
    result = measure(grad_part, device, warmup=args.warmup, repeats=args.repeats)
    result["step_median_s"] = measure(lambda: grad_part(labels()), device, warmup=0, repeats=args.repeats)[
        "median_s"
    ]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.95])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["fast", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["labels", "grad"], help=argparse.SUPPRESS)
    parser.add_argument("--ratio", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return

    shared = [
        f"--model={args.model}",
        f"--size={args.size}",
        f"--batch={args.batch}",
        f"--device={args.device}",
        f"--repeats={args.repeats}",
        f"--warmup={args.warmup}",
        f"--threads={args.threads}",
    ] + (["--amp"] if args.amp else [])
    print(
        f"MCC training step: {args.model} at {args.size}, batch {args.batch}, 8 masked views, "
        f"{'bf16 autocast' if args.amp else 'float32'}; {environment()}"
    )
    print(
        f"{'ratio':>5} {'part':>6} {'plain s':>8} {'fast s':>8} {'speedup':>8} {'plain MB':>9} "
        f"{'fast MB':>9} {'memory':>7}"
    )
    summary = {
        "benchmark": "train_step",
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "device": args.device,
        "amp": args.amp,
    }
    for ratio in args.ratios:
        runs = {
            (path, part): run_child(
                __file__, shared + [f"--path={path}", f"--part={part}", f"--ratio={ratio}"]
            )
            for part in ("labels", "grad")
            for path in ("plain", "fast")
        }
        rows = {part: (runs[("plain", part)], runs[("fast", part)]) for part in ("labels", "grad")}
        # The whole step: its time measured end to end, its peak the larger of the two parts' peaks.
        rows["step"] = tuple(
            {
                "median_s": runs[(path, "grad")]["step_median_s"],
                "peak_mb": max(runs[(path, "labels")]["peak_mb"], runs[(path, "grad")]["peak_mb"]),
            }
            for path in ("plain", "fast")
        )
        for part, (plain, fast) in rows.items():
            speedup = plain["median_s"] / fast["median_s"]
            memory = fast["peak_mb"] / max(plain["peak_mb"], 1e-9)
            print(
                f"{ratio:>5.2f} {part:>6} {plain['median_s']:>8.3f} {fast['median_s']:>8.3f} "
                f"{speedup:>7.2f}x {plain['peak_mb']:>9.1f} {fast['peak_mb']:>9.1f} {memory:>7.3f}"
            )
            prefix = f"ratio_{ratio}_" if part == "step" else f"ratio_{ratio}_{part}_"
            summary[prefix + "speedup"] = round(speedup, 2)
            summary[prefix + "memory"] = round(memory, 3)
            summary[prefix + "plain_s"] = round(plain["median_s"], 3)
            summary[prefix + "fast_s"] = round(fast["median_s"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
