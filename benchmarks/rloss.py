"""Cost of the regularised loss (rloss) in one released training step, against the rest of the step.

Every repeat runs, back to back on the same batch: the labels (``MCCNet.make_labels``), the fast gradient
part (forward, backward, AdamW step) without the reg term (``w_reg = 0``) and with it (``w_reg = 0.05``),
and ``dense_energy_loss`` alone (forward + backward on the crop-size decoder logits). Reported: medians of
wall time and of process CPU time (the CPU time does not count waiting for a core on a shared machine).

The images are smooth random scenes (a 14x14 random colour grid resized bicubically, plus pixel noise),
normalised with the ImageNet statistics; pure noise images are the lattice's worst case (``--noise``).
Ends with one JSON line.

    python benchmarks/rloss.py --threads 1                 # deit_tiny at 448, batch 4, CPU
    python benchmarks/rloss.py --device cuda               # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from common import HelpFormatter, environment, synchronize

from mcc.losses import dense_energy_loss
from mcc.network import MCCConfig, MCCNet

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_batch(args: argparse.Namespace, device: torch.device):
    g = torch.Generator().manual_seed(2)
    shape = (args.batch, 3, args.size, args.size)
    if args.noise:
        rgb = torch.rand(shape, generator=g)
    else:
        coarse = torch.rand(args.batch, 3, 14, 14, generator=g)
        rgb = F.interpolate(coarse, size=(args.size, args.size), mode="bicubic", align_corners=False)
        rgb = (rgb + 0.02 * torch.randn(shape, generator=g)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (rgb - mean) / std
    v1 = x.flip(-1)
    v2 = x + 0.1 * torch.randn(shape, generator=g)
    cls_label = torch.zeros(args.batch, 20)
    cls_label[:, [0, 7, 14]] = 1
    img_box = torch.tensor([[0, args.size, 0, args.size]] * args.batch)
    return [t.to(device) for t in (x, v1, v2, cls_label, img_box)]


def timed(fn, device):
    """``(wall seconds, CPU seconds, fn())``."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default="deit_tiny_patch16_224", help="timm ViT name")
    parser.add_argument("--size", type=int, default=448, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where it runs"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--noise", action="store_true", help="pure noise images (the lattice's worst case)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    device = torch.device(args.device)
    vit = timm.create_model(args.model, pretrained=False, img_size=args.size)
    with_reg = MCCConfig.released()
    without_reg = dataclasses.replace(with_reg, w_reg=0.0)
    net = MCCNet(vit, num_classes=20, config=with_reg).to(device).train()
    optimizer = torch.optim.AdamW(net.param_groups(), lr=6e-5)
    x, v1, v2, cls_label, img_box = make_batch(args, device)
    step = 13000  # seg and reg active
    generator = torch.Generator().manual_seed(1)

    def labels():
        return net.make_labels(x, cls_label, img_box, step, generator=generator)

    def grad_part(made, config):
        net.config = config
        losses = net.training_losses(x, v1, v2, cls_label, img_box, step, labels=made)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()
        return losses

    def reg_alone(made, logits):
        logits.grad = None
        image = x * net.pixel_std * 255 + net.pixel_mean * 255
        loss = dense_energy_loss(image, logits, made.pseudo_label, img_box)
        loss.backward()
        return loss

    made = labels()
    with torch.no_grad():
        seg = net.decoder(net.encoder(x).patches)
        logits = F.interpolate(seg, size=x.shape[-2:], mode="bilinear", align_corners=False)
    logits.requires_grad_(True)
    for _ in range(args.warmup):
        grad_part(made, without_reg)
        grad_part(made, with_reg)
        reg_alone(made, logits)
    rows = []
    for _ in range(args.repeats):
        label_t = timed(labels, device)
        made = label_t[2]
        plain_t = timed(functools.partial(grad_part, made, without_reg), device)
        reg_t = timed(functools.partial(grad_part, made, with_reg), device)
        alone_t = timed(functools.partial(reg_alone, made, logits), device)
        rows.append([label_t[:2], plain_t[:2], reg_t[:2], alone_t[:2]])
    reg_value = float(reg_t[2].reg.detach())

    def median(part: int, kind: int) -> float:
        return statistics.median(row[part][kind] for row in rows)

    summary = {"benchmark": "rloss", "model": args.model, "size": args.size, "batch": args.batch,
               "device": args.device, "noise": args.noise, "reg": reg_value}  # fmt: skip
    print(
        f"rloss in the released step: {args.model} at {args.size}, batch {args.batch}, float32, "
        f"{'noise' if args.noise else 'smooth'} images, {args.repeats} repeats; {environment()}"
    )
    print(f"{'part':34s} {'wall s':>8s} {'CPU s':>8s}")
    names = {
        "labels": (0, "labels (make_labels)"),
        "grad_without_reg": (1, "gradient part, w_reg = 0"),
        "grad_with_reg": (2, "gradient part, w_reg = 0.05"),
        "reg_alone": (3, "dense_energy_loss fwd + bwd"),
    }
    for key, (part, label) in names.items():
        wall, cpu = median(part, 0), median(part, 1)
        summary[f"{key}_s"], summary[f"{key}_cpu_s"] = round(wall, 3), round(cpu, 3)
        print(f"{label:34s} {wall:8.3f} {cpu:8.3f}")
    for kind, suffix in ((0, "s"), (1, "cpu_s")):
        rest = median(0, kind) + median(1, kind)
        whole = median(0, kind) + median(2, kind)
        summary[f"step_without_reg_{suffix}"] = round(rest, 3)
        summary[f"step_with_reg_{suffix}"] = round(whole, 3)
        summary[f"reg_share_{suffix}"] = round(median(3, kind) / whole, 3)
    print(
        f"{'whole step without / with reg':34s} {summary['step_without_reg_s']:8.3f} "
        f"{summary['step_without_reg_cpu_s']:8.3f} / {summary['step_with_reg_s']:.3f} "
        f"{summary['step_with_reg_cpu_s']:.3f}"
    )
    print(
        f"reg alone / whole step with reg: {summary['reg_share_s']:.1%} wall, "
        f"{summary['reg_share_cpu_s']:.1%} CPU"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
