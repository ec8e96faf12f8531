"""One full MCC training step: the fast computation vs the plain (published) one.

A step = the labels (no gradient: multi-scale CAMs, key masks, positiveness, affinity token labels, PAR
pseudo label) + the part with gradient (forward, backward, AdamW step).

* plain step: ``MCCNet.make_labels`` (every CAM scale on ``[x; flip x]``), then
  ``training_losses(..., fast=False, labels=...)``: every encoder pass run separately, as published;
* fast step: ``training_losses(..., fast=True)``, which makes its own labels and takes the CAMs of the
  unflipped crop at scale 1.0 from its gradient pass (docs/method.md section 3).

Rows: ``labels`` (the plain step's label pass; for the fast step, its label pass = fast step - fast
gradient part, a difference), ``grad`` (the gradient part with the labels given: plain vs fast shortcuts),
``step`` (the whole step).

* Time: one process per ratio runs, in every iteration, the labels, the plain gradient part, the fast
  gradient part and the whole fast step back to back, so slow drift of a shared machine hits both
  computations alike. Reported: medians of wall time, and the medians of the per-iteration ratios of
  wall time and of this process's CPU time (the fairer figure on a shared CPU with ``--threads 1``).
* Peak memory: each part of each computation, and each whole step, once in a fresh process (see
  ``common.py``).
* ``--breakdown``: where the fast step's time goes, each part timed alone on the same inputs (the CAM
  pass of each scale, the CAM resizes and merges, PAR, the rest of the labels, the gradient pass, the
  masked views; heads, losses and optimiser = the whole step minus those).
* ``--dry-run``: builds a tiny model on the CPU and runs each part once (checks the script, no timing).

Ends with one JSON line.

    python benchmarks/train_step.py --threads 1             # deit_tiny at 448, batch 1, CPU
    python benchmarks/train_step.py --threads 1 --breakdown
    python benchmarks/train_step.py --model deit_base_patch16_224 --device cuda --batch 4 --amp
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
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

from mcc.cam.labels import _inside
from mcc.cam.multi_scale import _deferred_multi_scale_cam
from mcc.network import MCCConfig, MCCNet
from mcc.refine.background import _refine

os.environ.setdefault("HF_HUB_OFFLINE", "1")


STEP = 13000  # after every schedule switch of the released preset (the rloss term stays off, w_reg aside)


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
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.amp)
    inputs = (x, v1, v2, cls_label, img_box)

    def labels():
        with torch.autocast(**amp):
            return net.make_labels(x, cls_label, img_box, STEP, generator=torch.Generator().manual_seed(1))

    def optimise(losses):
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()

    def grad_part(made, fast: bool):
        with torch.autocast(**amp):
            losses = net.training_losses(*inputs, STEP, fast=fast, labels=made)
        optimise(losses)

    def fast_step():
        with torch.autocast(**amp):
            losses = net.training_losses(*inputs, STEP, generator=torch.Generator().manual_seed(1))
        optimise(losses)

    return device, net, inputs, amp, labels, grad_part, fast_step


def timed(fn, device):
    """``((wall s, CPU s), fn())``: wall time and this process's CPU time."""
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return (time.perf_counter() - start, time.process_time() - cpu), result


def time_child(args: argparse.Namespace) -> dict:
    device, _, _, _, labels, grad_part, fast_step = setup(args, args.ratio)
    made = labels()
    for _ in range(args.warmup):
        grad_part(made, True)
        grad_part(made, False)
        fast_step()
    rows = []
    for _ in range(args.repeats):
        label_t, made = timed(labels, device)
        plain_t, _ = timed(functools.partial(grad_part, made, False), device)
        fast_t, _ = timed(functools.partial(grad_part, made, True), device)
        step_t, _ = timed(fast_step, device)
        rows.append((label_t, plain_t, fast_t, step_t))
    return {"rows": rows}


def memory_child(args: argparse.Namespace) -> dict:
    device, _, _, _, labels, grad_part, fast_step = setup(args, args.ratio)
    if args.part == "labels":
        mark = memory_mark(device)
        labels()
    elif args.part == "step":  # a whole step: its labels, then its gradient part
        mark = memory_mark(device)
        if args.path == "fast":
            fast_step()  # its own label pass included
        else:
            grad_part(labels(), False)
    else:
        made = labels()
        # The labels' own peak is not counted: it is measured by the "labels" child.
        mark = memory_mark(device, after_peak=True)
        grad_part(made, args.path == "fast")
    return {"peak_mb": peak_above(mark, device)}


def breakdown_child(args: argparse.Namespace) -> dict:
    """Median wall and CPU seconds of each part of the fast step, each part run alone."""
    device, net, (x, v1, v2, cls_label, img_box), amp, labels, _, fast_step = setup(args, args.ratio)
    cfg = net.config
    made = labels()
    parts: dict[str, Callable[[], object]] = {}
    height, width = x.shape[-2:]
    for scale in cfg.cam_scales:
        size = (int(scale * height), int(scale * width))
        if size == (height, width):  # only the flipped half: the unflipped maps come from the gradient pass
            images, name = x.flip(-1), f"CAM pass, scale {scale} (flipped half)"
        else:
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            images, name = torch.cat([scaled, scaled.flip(-1)]), f"CAM pass, scale {scale}"
        parts[name] = functools.partial(_under, amp, net.cams, images)
    # The CAM resizes, flip merges, sums and min-max alone: a cam_fn that returns stored maps.
    with torch.no_grad(), torch.autocast(**amp):
        stored = {}
        for scale in cfg.cam_scales:
            size = (int(scale * height), int(scale * width))
            scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear")
            stored[size] = net.cams(torch.cat([scaled, scaled.flip(-1)]))
        direct = net.cams(x)

    def stored_cams(images):
        maps = stored[tuple(images.shape[-2:])]
        return tuple(m[: images.shape[0]] for m in maps)

    def merges():
        return _deferred_multi_scale_cam(stored_cams, x, cfg.cam_scales, True, defer_direct=True)(direct)

    parts["CAM resizes, flip merges, min-max"] = functools.partial(_under, amp, merges)
    box = net._check_label_inputs(x, cls_label, img_box)
    inside = _inside(box, x.shape[-2:])

    def par():
        return _refine(
            net.par, net._par_image(x), made.cam, cls_label, cfg.high_thre, cfg.low_thre, inside,
            cfg.ignore_index, cfg.par_down_scale,
        )  # fmt: skip

    def rest_of_labels():
        generator = torch.Generator().manual_seed(1)
        return net._labels_from_cams(x, cls_label, box, STEP, made.cam, made.cam_aux, None, generator)

    parts["PAR pseudo label"] = functools.partial(_under, amp, par)
    parts["key masks, positives, token labels + PAR"] = functools.partial(_under, amp, rest_of_labels)
    weights = {}

    def gradient_pass():
        with torch.autocast(**amp):
            main, student_global, _ = net._encode_global(x, v1)
            outputs = (main.patches, main.aux, student_global)
            if not weights:
                weights.update({i: torch.randn_like(o, dtype=torch.float32) for i, o in enumerate(outputs)})
            loss = sum((o.float() * weights[i]).sum() for i, o in enumerate(outputs))
        loss.backward()
        net.zero_grad(set_to_none=True)

    def masked_views():
        with torch.autocast(**amp):
            local = net.encoder(v2, made.key_mask).cls
        local.float().square().mean().backward()
        net.zero_grad(set_to_none=True)

    parts["gradient pass [x; v1], fwd + bwd"] = gradient_pass
    parts["masked views, fwd + bwd"] = masked_views
    parts["whole fast step"] = fast_step
    for fn in parts.values():
        for _ in range(args.warmup):
            fn()
    times = {name: [] for name in parts}
    for _ in range(args.repeats):
        for name, fn in parts.items():
            times[name].append(timed(fn, device)[0])
    return {
        name: [statistics.median(t[0] for t in rows), statistics.median(t[1] for t in rows)]
        for name, rows in times.items()
    }


def _under(amp: dict, fn, *args):
    with torch.no_grad(), torch.autocast(**amp):
        return fn(*args)


def dry_run(args: argparse.Namespace) -> None:
    """Every part once on a tiny model on the CPU, whatever the options say (no timing, no children)."""
    tiny = argparse.Namespace(**{**vars(args), "model": "test_vit", "size": 64, "batch": 1, "device": "cpu",
                                 "repeats": 1, "warmup": 0, "ratio": args.ratios[0]})  # fmt: skip
    time_child(tiny)
    breakdown_child(tiny)
    for part, path in (
        ("labels", "fast"),
        ("grad", "plain"),
        ("grad", "fast"),
        ("step", "plain"),
        ("step", "fast"),
    ):
        memory_child(argparse.Namespace(**{**vars(tiny), "part": part, "path": path}))
    summary = {"benchmark": "train_step", "dry_run": True, "model": args.model, "size": args.size,
               "batch": args.batch, "device": args.device, "amp": args.amp, "ratios": args.ratios,
               "breakdown": args.breakdown}  # fmt: skip
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_arguments(parser, batch=1, repeats=7)
    parser.add_argument(
        "--ratios", type=float, nargs="+", default=[0.75, 0.95], help="key-mask ratios to measure"
    )
    parser.add_argument("--breakdown", action="store_true", help="also time each part of the fast step")
    parser.add_argument("--dry-run", action="store_true", help="run each part once on a tiny CPU model")
    parser.add_argument(
        "--part", choices=["time", "labels", "grad", "step", "breakdown"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        children = {"time": time_child, "breakdown": breakdown_child}
        print(json.dumps(children.get(args.part, memory_child)(args)))
        return
    if args.dry_run:
        dry_run(args)
        return

    shared = child_arguments(args)
    print(
        f"MCC training step: {args.model} at {args.size}, batch {args.batch}, 8 masked views, "
        f"{'bf16 autocast' if args.amp else 'float32'}, {args.repeats} interleaved repeats; {environment()}"
    )
    header = ("ratio", "part", "plain s", "fast s", "speedup", "CPU speedup", "plain MB", "fast MB")
    widths = (5, 6, 8, 8, 8, 11, 9, 9)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths)))
    summary = {"benchmark": "train_step", "model": args.model, "size": args.size, "batch": args.batch,
               "device": args.device, "amp": args.amp, "threads": torch.get_num_threads()}  # fmt: skip
    breakdowns = {}
    for ratio in args.ratios:
        rows = run_child(__file__, shared + ["--part=time", f"--ratio={ratio}"])["rows"]
        memory = {
            (part, path): run_child(
                __file__, shared + [f"--part={part}", f"--path={path}", f"--ratio={ratio}"]
            )["peak_mb"]
            for part, path in (
                ("labels", "fast"),
                ("grad", "plain"),
                ("grad", "fast"),
                ("step", "plain"),
                ("step", "fast"),
            )
        }
        # rows: (labels, plain gradient part, fast gradient part, whole fast step), each (wall s, CPU s)
        columns = {
            "labels": (lambda r, k: r[0][k], lambda r, k: r[3][k] - r[2][k]),
            "grad": (lambda r, k: r[1][k], lambda r, k: r[2][k]),
            "step": (lambda r, k: r[0][k] + r[1][k], lambda r, k: r[3][k]),
        }
        peaks = {
            "labels": (memory[("labels", "fast")], float("nan")),
            "grad": (memory[("grad", "plain")], memory[("grad", "fast")]),
            "step": (memory[("step", "plain")], memory[("step", "fast")]),
        }
        for part, (plain, fast) in columns.items():
            plain_s = statistics.median(plain(r, 0) for r in rows)
            fast_s = statistics.median(fast(r, 0) for r in rows)
            speedup = statistics.median(plain(r, 0) / fast(r, 0) for r in rows)
            cpu_speedup = statistics.median(plain(r, 1) / fast(r, 1) for r in rows)
            plain_mb, fast_mb = peaks[part]
            print(
                f"{ratio:>5.2f} {part:>6} {plain_s:>8.3f} {fast_s:>8.3f} {speedup:>7.2f}x "
                f"{cpu_speedup:>10.2f}x {plain_mb:>9.1f} {fast_mb:>9.1f}"
            )
            prefix = f"ratio_{ratio}_" if part == "step" else f"ratio_{ratio}_{part}_"
            summary[prefix + "speedup"] = round(speedup, 2)
            summary[prefix + "cpu_speedup"] = round(cpu_speedup, 2)
            summary[prefix + "plain_s"] = round(plain_s, 3)
            summary[prefix + "fast_s"] = round(fast_s, 3)
            summary[prefix + "plain_mb"] = round(plain_mb, 1)
            if part != "labels":
                summary[prefix + "fast_mb"] = round(fast_mb, 1)
                summary[prefix + "memory"] = round(fast_mb / max(plain_mb, 1e-9), 3)
        if args.breakdown:
            breakdowns[ratio] = run_child(__file__, shared + ["--part=breakdown", f"--ratio={ratio}"])
    for ratio, parts in breakdowns.items():
        whole_s, whole_cpu = parts.pop("whole fast step")
        measured = [name for name in parts if name != "PAR pseudo label"]  # PAR is inside labels_part
        rest = [whole_s - sum(parts[n][0] for n in measured), whole_cpu - sum(parts[n][1] for n in measured)]
        parts["heads, decoder, projector, losses, optimiser (the rest)"] = rest
        print(f"\nfast step at ratio {ratio}, each part alone ({args.repeats} repeats, medians):")
        print(f"{'part':<58} {'wall s':>7} {'CPU s':>7} {'share':>6}")
        for name, (wall, cpu) in parts.items():
            indent = "  of which " if name == "PAR pseudo label" else ""
            print(f"{indent + name:<58} {wall:>7.3f} {cpu:>7.3f} {cpu / whole_cpu:>6.1%}")
        print(f"{'whole fast step':<58} {whole_s:>7.3f} {whole_cpu:>7.3f} {1:>6.0%}")
        summary[f"ratio_{ratio}_breakdown_cpu_s"] = {name: round(v[1], 3) for name, v in parts.items()}
        summary[f"ratio_{ratio}_breakdown_whole_cpu_s"] = round(whole_cpu, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
