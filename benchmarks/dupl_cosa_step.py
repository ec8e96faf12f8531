"""Cost per training step of each DuPL / CoSA option, against released MCC, in one run.

Every option gets its own network (same initialisation) and runs one whole step (labels, forward,
backward, AdamW; CoSA's teacher also its EMA update) per iteration, interleaved with the released step,
so slow drift of a shared machine hits all of them alike. Reported per option: median seconds per step
and the median of the per-iteration ratios to the released step. Step 13000 of the published schedule,
where every option acts (dynamic threshold from 2000, filter from 8000, consistency from 8001). Ends with
one JSON line.

    python benchmarks/dupl_cosa_step.py --threads 1                    # deit_tiny at 256, batch 2, CPU
    python benchmarks/dupl_cosa_step.py --size 448 --device cuda --amp  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import timm
import torch
from common import HelpFormatter, add_common_arguments, environment, synchronize

from mcc.data import StrongAugment
from mcc.network import MCCConfig, MCCNet
from mcc.network.config import DUPL_VOC_THRESHOLDS
from mcc.training.loop import make_ema_teacher

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STEP = 13000
OPTIONS = {
    "released": {},
    "dynamic_thre": {"dynamic_thre": DUPL_VOC_THRESHOLDS},
    "gmm_filter": {"gmm_filter_from": 8000},
    "consistency": {"w_consistency": 0.05},
    "ema_teacher": {"ema_teacher_decay": 0.9994, "w_seg_to_cam": 0.05},
}
OPTIONS["all"] = {k: v for option in list(OPTIONS.values()) for k, v in option.items()}


def make_step(args: argparse.Namespace, overrides: dict):
    torch.manual_seed(0)
    device = torch.device(args.device)
    vit = timm.create_model(args.model, pretrained=False, img_size=args.size)
    net = MCCNet(vit, num_classes=20, config=MCCConfig.released(**overrides)).to(device).train()
    teacher = make_ema_teacher(net)
    optimizer = torch.optim.AdamW(net.param_groups(), lr=6e-5, foreach=True)
    g = torch.Generator().manual_seed(2)
    shape = (args.batch, 3, args.size, args.size)
    x, v1, v2 = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    strong_view = StrongAugment()
    rgb = (x.clamp(-2, 2) * 60 + 128).to(torch.uint8).cpu()
    strong = torch.stack([strong_view(image, g).float() / 255 for image in rgb]).to(device).flip(-1)
    cls_label = torch.zeros(args.batch, 20, device=device)
    cls_label[:, [0, 7, 14]] = 1
    img_box = torch.tensor([[0, args.size, 0, args.size]] * args.batch, device=device)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp)

    def step() -> None:
        with torch.autocast(**amp):
            losses = net.training_losses(
                x, v1, v2, cls_label, img_box, STEP, generator=torch.Generator().manual_seed(1),
                strong=strong, teacher=None if teacher is None else teacher.module,
            )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()
        if teacher is not None:
            teacher.update_parameters(net)

    return device, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_arguments(parser, batch=2, repeats=5)
    parser.set_defaults(size=256)  # 0.75 x 256 = 192: whole patches for the strong view
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = {name: make_step(args, overrides) for name, overrides in OPTIONS.items()}
    print(
        f"DuPL / CoSA options in the MCC step: {args.model} at {args.size}, batch {args.batch}, "
        f"{'bf16 autocast' if args.amp else 'float32'}, {args.repeats} interleaved repeats; {environment()}"
    )
    for _ in range(args.warmup):
        for _, step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, (device, step) in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    summary = {"benchmark": "dupl_cosa_step", "model": args.model, "size": args.size, "batch": args.batch,
               "device": args.device, "amp": args.amp, "threads": torch.get_num_threads()}  # fmt: skip
    print(f"{'option':>14} {'s/step':>8} {'x released':>10}")
    for name, values in times.items():
        ratio = statistics.median(v / r for v, r in zip(values, times["released"], strict=True))
        seconds = statistics.median(values)
        print(f"{name:>14} {seconds:>8.3f} {ratio:>9.2f}x")
        summary[f"{name}_s"] = round(seconds, 3)
        summary[f"{name}_ratio"] = round(ratio, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
