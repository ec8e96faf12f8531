"""Masked views through a ViT: token-dropping path vs plain masked path (forward + backward).

V masked views of each of B images (the MCC local views), at several masking ratios. Prints median
time and peak memory of each path and their ratios, then one JSON line.

    python benchmarks/masked_views.py                       # deit_tiny at 448, B=2, V=8, CPU
    python benchmarks/masked_views.py --model deit_base_patch16_224 --device cuda --amp
"""

from __future__ import annotations

import argparse
import json
import os

import timm
import torch
from common import HelpFormatter, add_common_arguments, child_arguments, environment, measure, run_child

from mcc.attention import ScaledBernoulliKeyMask, patch_vit

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model(args.model, pretrained=False, img_size=args.size).to(device).train()
    vit = patch_vit(model)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    grid = vit.grid_size(images)
    generator = torch.Generator().manual_seed(1)
    key_mask = ScaledBernoulliKeyMask(args.ratio, 4)(args.batch, grid, args.views, generator=generator)
    key_mask = key_mask.to(device)
    drop_tokens = args.path == "fast"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            cls = vit(images, key_mask, drop_tokens=drop_tokens).cls
        cls.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    result = measure(step, device, warmup=args.warmup, repeats=args.repeats)
    result["kept_fraction"] = float((~key_mask).float().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_arguments(parser, batch=2, repeats=5)
    parser.add_argument("--views", type=int, default=8, help="masked views per image")
    parser.add_argument(
        "--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.95], help="key-mask ratios to measure"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return

    shared = child_arguments(args, ("views",))
    print(
        f"masked views: {args.model} at {args.size}, B={args.batch}, V={args.views}, forward+backward, "
        f"{'bf16 autocast' if args.amp else 'float32'}; {environment()}"
    )
    print(
        f"{'ratio':>6} {'kept':>6} {'plain s':>9} {'fast s':>9} {'speedup':>8} "
        f"{'plain MB':>9} {'fast MB':>9} {'memory':>7}"
    )
    summary = {
        "benchmark": "masked_views",
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "views": args.views,
        "device": args.device,
        "amp": args.amp,
    }
    for ratio in args.ratios:
        plain = run_child(__file__, shared + ["--path=plain", f"--ratio={ratio}"])
        fast = run_child(__file__, shared + ["--path=fast", f"--ratio={ratio}"])
        speedup = plain["median_s"] / fast["median_s"]
        memory = fast["peak_mb"] / max(plain["peak_mb"], 1e-9)
        print(
            f"{ratio:>6.2f} {fast['kept_fraction']:>6.3f} {plain['median_s']:>9.3f} {fast['median_s']:>9.3f} "
            f"{speedup:>7.2f}x {plain['peak_mb']:>9.1f} {fast['peak_mb']:>9.1f} {memory:>7.3f}"
        )
        summary[f"ratio_{ratio}_speedup"] = round(speedup, 2)
        summary[f"ratio_{ratio}_memory"] = round(memory, 3)
        summary[f"ratio_{ratio}_plain_s"] = round(plain["median_s"], 4)
        summary[f"ratio_{ratio}_fast_s"] = round(fast["median_s"], 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
