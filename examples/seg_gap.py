"""Why the segmentation head lags its own training target in the CPU demo: a measured breakdown.

    python examples/seg_gap.py --out runs/seg_gap/demo                      # the demo as it is
    python examples/seg_gap.py --out runs/seg_gap/start10 --seg-start 0.1   # seg loss from 10 % of the steps

trains the demo's network (``mcc.cli.demo``: synthetic VOC, 400 x 64 px, ViT from scratch, 800 steps)
with the segmentation loss starting at ``--seg-start`` of the run and weight ``--w-seg``, scoring the
validation split every ``--eval-every`` steps (CAM and segmentation: the curve), then writes
``gap.json`` with the curve and:

* ``token_oracle``: the best a decoder at token resolution can do on these images: the ground truth
  averaged over each patch (one-hot, area mean on the token grid), upsampled bilinearly as the decoder's
  logits are, argmax;
* ``seg``: the decoder (single scale, no flip) on every pixel, and ``seg_on_target_pixels``: on the pixels
  the training target labels, the pixels ``target`` is scored on;
* ``target``: the training target (PAR, levels 0.25 / 0.7) on the pixels it labels, ``target_coverage``,
  and ``target_token_oracle``: the target's complete version (PAR at 0.5) through the token-grid
  bottleneck above, scored on every pixel, i.e. what the decoder could reach by fitting its target;
* ``probe``: a fresh decoder trained to convergence (``--probe-epochs``, cosine from the head's lr) on
  the frozen encoder's tokens of the training images against the same targets, with the training
  step's balanced loss and with plain cross entropy, then scored like ``seg``: how far more decoder
  training alone goes, and what the loss's balance costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mcc.cli._common import ArgumentParser, HelpFormatter, run_cli
from mcc.cli.demo import demo_config
from mcc.data import VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.losses import segmentation_loss
from mcc.network import MCCNet
from mcc.network.decoder import LargeFOV
from mcc.refine import refine_cams_with_background
from mcc.training import ConfusionMatrix, TrainSettings, load_checkpoint, train
from mcc.training.pretrain import ViTArch


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--data", default="runs/seg_gap/data", help="synthetic VOC root (made if missing)")
    parser.add_argument("--steps", type=int, default=800, help="training steps")
    parser.add_argument("--seg-start", type=float, default=0.5, help="fraction of the steps (demo: 0.5)")
    parser.add_argument("--w-seg", type=float, default=0.1, help="segmentation loss weight (demo: 0.1)")
    parser.add_argument("--lr", type=float, default=6e-4, help="encoder learning rate")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between points of the curve")
    parser.add_argument(
        "--probe-epochs", type=int, default=60, help="epochs of the head fitted on the frozen encoder"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, model and batches")
    parser.add_argument(
        "--reuse", action="store_true", help="load --out/run/last.pt and its curve instead of training"
    )
    return parser


def token_oracle(
    labels: torch.Tensor, grid: tuple[int, int], num_classes: int, ignore: int = 255
) -> torch.Tensor:
    """(B, H, W) labels through the token grid: one-hot area mean on ``grid``, bilinear up, argmax."""
    one_hot = F.one_hot(labels.masked_fill(labels == ignore, 0), num_classes).permute(0, 3, 1, 2).float()
    one_hot = one_hot * (labels != ignore)[:, None]
    small = F.adaptive_avg_pool2d(one_hot, grid)
    return F.interpolate(small, size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)


@torch.no_grad()
def targets(net: MCCNet, image: torch.Tensor, cls_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training target (levels low/high) and its complete version (one level 0.5) of one image."""
    cfg = net.config
    cam, _ = net.multi_scale_cams(image)
    rgb = net.denormalize(image)
    out = []
    for low, high in ((cfg.low_thre, cfg.high_thre), (0.5, 0.5)):
        out.append(
            refine_cams_with_background(
                net.par, rgb, cam, cls_label, high_thre=high, low_thre=low, down_scale=cfg.par_down_scale
            )
        )
    return out[0], out[1]


@torch.no_grad()
def score_split(net: MCCNet, decoder: torch.nn.Module, val_set: VOCSegmentation) -> dict[str, float]:
    num = val_set.num_classes
    matrices = {
        k: ConfusionMatrix(num)
        for k in ("seg", "seg_on_target_pixels", "target", "target_token_oracle", "token_oracle")
    }
    coverage = [0, 0]
    for index in range(len(val_set)):
        sample = val_set[index]
        image, mask, cls_label = sample["image"][None], sample["mask"][None], sample["cls_label"][None]
        tokens = net.encoder(image).patches
        grid = tuple(tokens.shape[-2:])
        logits = F.interpolate(decoder(tokens), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        seg = logits.argmax(1)
        target, complete = targets(net, image, cls_label)
        labelled = target != 255
        matrices["seg"].update(seg, mask)
        matrices["seg_on_target_pixels"].update(seg, mask.masked_fill(~labelled, 255))
        matrices["target"].update(target, mask.masked_fill(~labelled, 255))
        matrices["target_token_oracle"].update(token_oracle(complete, grid, num), mask)
        matrices["token_oracle"].update(token_oracle(mask, grid, num), mask)
        coverage[0] += int(labelled.sum())
        coverage[1] += labelled.numel()
    result = {k: 100 * m.compute().miou for k, m in matrices.items()}
    result["target_coverage"] = 100 * coverage[0] / coverage[1]
    return result


def probe(
    net: MCCNet, train_root: Path, epochs: int, lr: float, seed: int, loss: str = "balanced"
) -> LargeFOV:
    """A fresh decoder fitted on frozen tokens of the (whole, and flipped) training images.

    ``loss``: "balanced" (the training step's :func:`~mcc.segmentation_loss`, background and foreground
    halves averaged separately) or "ce" (plain cross entropy over the labelled pixels).
    """
    data = VOCSegmentation(train_root, "train")
    feats, labels = [], []
    with torch.no_grad():
        for index in range(len(data)):
            sample = data[index]
            image, cls_label = sample["image"][None], sample["cls_label"][None]
            target, _ = targets(net, image, cls_label)
            for flip in (False, True):
                x = image.flip(-1) if flip else image
                feats.append(net.encoder(x).patches)
                labels.append(target.flip(-1) if flip else target)
    feats, labels = torch.cat(feats), torch.cat(labels)
    torch.manual_seed(seed)
    cfg = net.config
    decoder = LargeFOV(  # built as the network's own head
        feats.shape[1],
        net.num_classes + 1,
        cfg.decoder_dim,
        cfg.decoder_dilation,
        getattr(cfg, "decoder_bias", True),
        getattr(cfg, "decoder_init", "kaiming"),
    )
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.01)
    batches = len(feats) // 16
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(feats), generator=generator)
        for b in range(batches):
            pick = order[b * 16 : (b + 1) * 16]
            logits = F.interpolate(
                decoder(feats[pick]), size=labels.shape[-2:], mode="bilinear", align_corners=False
            )
            if loss == "ce":
                value = F.cross_entropy(logits, labels[pick], ignore_index=255)
            else:
                value = segmentation_loss(logits, labels[pick])
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            schedule.step()
    return decoder.eval()


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data)
    if not (root / "classes.txt").is_file():
        make_synthetic_voc(root, 400, 50, 64, 0)
    torch.manual_seed(args.seed)
    config = demo_config(args.steps)
    config = dataclasses.replace(config, seg_start_step=int(args.seg_start * args.steps), w_seg=args.w_seg)
    train_set = VOCTrainViews(root, "train", crop_size=64, seed=args.seed)
    val_set = VOCSegmentation(root, "val")
    net = MCCNet(ViTArch().build(0), train_set.num_foreground_classes, config)
    settings = TrainSettings(
        work_dir=str(out / "run"), max_iters=args.steps, batch_size=8, base_lr=args.lr,
        warmup_iters=args.steps // 10, seed=args.seed, num_workers=0, log_every=args.eval_every,
        eval_every=args.eval_every, eval_at_end=True, save_every=0, save_best=False,
    )  # fmt: skip
    tic = time.perf_counter()
    if args.reuse:
        net.load_state_dict(load_checkpoint(out / "run" / "last.pt")["model"])
        curve = json.loads((out / "gap.json").read_text())["curve"]
    else:
        result = train(net, train_set, settings, val_set=val_set, device="cpu")
        curve = [{"step": s, **{k: 100 * v for k, v in m.items()}} for s, m in result.evaluations]
    net.eval()
    final = score_split(net, net.decoder, val_set)
    probes = {}
    for loss in ("balanced", "ce"):
        decoder = probe(net, root, args.probe_epochs, args.lr * config.head_lr_scale, args.seed, loss)
        probed = score_split(net, decoder, val_set)
        probes[loss] = {"seg": probed["seg"], "seg_on_target_pixels": probed["seg_on_target_pixels"]}
    gap = {
        "command": "python examples/seg_gap.py "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "seg_start_step": config.seg_start_step,
        "w_seg": config.w_seg,
        "curve": curve,
        "final": final,
        "probe": probes,
        "wall_time_s": time.perf_counter() - tic,
    }
    (out / "gap.json").write_text(json.dumps(gap, indent=2) + "\n")
    print(json.dumps({k: gap[k] for k in ("final", "probe")}, indent=2))
    return gap


if __name__ == "__main__":
    run_cli("seg_gap.py", main)
