"""MCC end to end on CPU in a few minutes: synthetic VOC, a small ViT from scratch, CAM vs pseudo labels.

    make demo                    # = HF_HUB_OFFLINE=1 .venv/bin/python examples/demo.py
    python -m mcc.cli.demo       # the same, for an installed package (also: mcc-demo)

1. writes the built-in synthetic VOC (``mcc.data.make_synthetic_voc``: textured shapes on clutter, exact
   masks) into the work directory;
2. trains a small timm ``VisionTransformer`` from random initialisation with the library's training loop
   (``mcc.training.train``) and the released MCC preset, its schedule scaled down (warm-up, start of the
   segmentation loss, switch to final-CAM positives) and the key-mask cell scaled to the smaller token grid;
3. scores on the synthetic validation split: the CAM labels (background threshold 0.5, and the best of a
   sweep), the PAR-refined pseudo labels (the training step's segmentation target) and the decoder's
   segmentation, next to an all-background labelling;
4. keeps the results in the output folder (default ``runs/demo``): ``metrics.json`` (mIoU in percent)
   and ``samples.png``, validation images through the pipeline: image | CAM | CAM+PAR | prediction |
   ground truth.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from mcc.cam import CAMExtractor
from mcc.cli._common import ArgumentParser, UserError, non_negative_int, positive_float, positive_int, run_cli
from mcc.data import VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.network import MCCConfig, MCCNet
from mcc.refine import refine_cams_with_background
from mcc.training import ConfusionMatrix, TrainSettings, evaluate, train
from mcc.training.outputs import scores_record, write_json
from mcc.visualize import make_grid, pipeline_strip, to_pil

__all__ = ["build_parser", "demo_config", "main", "sample_grid"]

# 0.5 first: the published CAM threshold, also the background level of the refined "pseudo" label.
SWEEP = (0.5, 0.3, 0.35, 0.4, 0.45, 0.55, 0.6, 0.65, 0.7, 0.75)
SAMPLE_TITLES = ("image", "CAM", "CAM+PAR", "prediction", "ground truth")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mcc-demo",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--out-dir",
        default="runs/demo",
        help="where metrics.json and samples.png are written (default: runs/demo)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="synthetic data and training run (default: a temporary folder, removed at the end)",
    )
    parser.add_argument("--num-train", type=positive_int, default=400, help="synthetic training images")
    parser.add_argument("--num-val", type=positive_int, default=50, help="synthetic validation images")
    parser.add_argument("--size", type=positive_int, default=64, help="image side and crop size, pixels")
    parser.add_argument("--patch", type=positive_int, default=8, help="ViT patch size, pixels")
    parser.add_argument("--dim", type=positive_int, default=96, help="ViT width")
    parser.add_argument("--depth", type=positive_int, default=4, help="ViT blocks")
    parser.add_argument("--heads", type=positive_int, default=4, help="ViT attention heads")
    parser.add_argument("--steps", type=positive_int, default=800, help="optimiser steps")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    parser.add_argument(
        "--lr", type=positive_float, default=6e-4, help="encoder lr; heads x10 (released preset)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (more threads than free cores is much slower)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the run")
    parser.add_argument("--log-every", type=positive_int, default=50, help="steps between log lines")
    parser.add_argument(
        "--num-samples",
        type=non_negative_int,
        default=4,
        help="validation images in samples.png (0: no picture)",
    )
    parser.add_argument(
        "--zoom", type=positive_int, default=2, help="pixel repetition of the panels in samples.png"
    )
    return parser


def demo_config(steps: int) -> MCCConfig:
    """The released preset with its schedule and sizes scaled to a short CPU run."""
    return MCCConfig.released(
        "voc",
        seg_start_step=steps // 2,  # published: 2000 of 20000 steps, after the CAMs have formed
        final_cam_positives_from=int(0.6 * steps),  # published: 12000 of 20000
        mask_scale=2,  # an 8x8 token grid in 2x2 cells is like 28x28 in 4x4 cells (published)
        projector_dim=256,
        projector_hidden_dim=256,
        projector_bottleneck_dim=64,
        decoder_dim=128,
        decoder_dilation=2,
    )


@torch.no_grad()
def sample_grid(
    net: MCCNet, dataset: VOCSegmentation, indices: list[int], bkg_thre: float = 0.5, zoom: int = 1
) -> np.ndarray:
    """image | CAM | CAM+PAR | prediction | ground truth for some images of a labelled split.

    The panels are what the demo scores: the multi-scale + flip CAM (:class:`~mcc.CAMExtractor`) of the
    image's classes, the PAR-refined label with one background level ``bkg_thre`` (the ``"pseudo"``
    score of :func:`~mcc.training.evaluate`), and the segmentation (flip) next to the ground truth.

    Args:
        net: the trained network (on CPU or any device).
        dataset: samples with ``image`` (3, H, W) normalised, ``mask`` (H, W) and ``cls_label`` (C,).
        indices: which samples, one row each.
        bkg_thre: background level of the CAM+PAR label.
        zoom: every panel pixel repeated ``zoom x zoom`` times (nearest), for small images.

    Returns:
        (H_grid, W_grid, 3) ``uint8`` RGB with a title row.
    """
    if zoom < 1:
        raise ValueError(f"zoom must be >= 1, got {zoom}")
    device = next(net.parameters()).device
    extractor = CAMExtractor(net)
    was_training = net.training
    net.eval()
    rows = []
    try:
        for index in indices:
            sample = dataset[index]
            image = sample["image"][None].to(device)
            cls_label = sample["cls_label"][None].to(device)
            cam = extractor(image)
            rgb = net.denormalize(image)
            refined = refine_cams_with_background(
                net.par,
                rgb,
                cam,
                cls_label,
                high_thre=bkg_thre,
                low_thre=bkg_thre,
                ignore_index=net.config.ignore_index,
                down_scale=net.config.par_down_scale,
            )
            prediction = net.segment(image, (1.0,), True).argmax(1)
            strip = pipeline_strip(
                rgb[0],
                cam=cam[0] * cls_label[0, :, None, None],  # the classes of the image, as scored
                cam_par=refined[0],
                prediction=prediction[0],
                ground_truth=sample["mask"],
                padding=0,
            )
            width = strip.shape[1] // len(SAMPLE_TITLES)
            panels = [strip[:, i * width : (i + 1) * width] for i in range(len(SAMPLE_TITLES))]
            rows.append([panel.repeat(zoom, axis=0).repeat(zoom, axis=1) for panel in panels])
    finally:
        net.train(was_training)
    return make_grid(rows, padding=2 * zoom, titles=SAMPLE_TITLES, title_size=6 * zoom + 1)


def background_only_miou(dataset: VOCSegmentation, ignore_index: int = 255) -> float:
    """mIoU (0-1) of labelling every pixel background: the floor any method must clear."""
    matrix = ConfusionMatrix(dataset.num_classes, ignore_index)
    for index in range(len(dataset)):
        mask = dataset[index]["mask"]
        matrix.update(torch.zeros_like(mask), mask)
    return matrix.compute().miou


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the demo; returns what it writes to ``<out-dir>/metrics.json`` (mIoU in percent)."""
    args = build_parser().parse_args(argv)
    if args.num_samples < 0 or args.num_samples > args.num_val:
        raise UserError(f"--num-samples must be in [0, --num-val = {args.num_val}], got {args.num_samples}")
    if args.size % args.patch:
        raise UserError(f"--size {args.size} must be a multiple of --patch {args.patch}")
    if args.dim % args.heads:
        raise UserError(f"--dim {args.dim} must be a multiple of --heads {args.heads}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tic = time.perf_counter()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="mcc_demo_") if temporary else args.work_dir)
    try:
        root = make_synthetic_voc(work_dir / "synthetic", args.num_train, args.num_val, args.size, args.seed)
        train_set = VOCTrainViews(root, "train", crop_size=args.size, seed=args.seed)
        val_set = VOCSegmentation(root, "val")
        print(
            f"synthetic VOC: {args.num_train} train / {args.num_val} val images of {args.size} px in {root}"
        )

        vit = VisionTransformer(
            img_size=args.size,
            patch_size=args.patch,
            embed_dim=args.dim,
            depth=args.depth,
            num_heads=args.heads,
        )
        net = MCCNet(vit, train_set.num_foreground_classes, demo_config(args.steps))
        settings = TrainSettings(
            work_dir=str(work_dir / "run"),
            max_iters=args.steps,
            batch_size=args.batch_size,
            base_lr=args.lr,
            warmup_iters=args.steps // 10,
            seed=args.seed,
            num_workers=0,
            log_every=args.log_every,
            eval_every=0,
            eval_at_end=False,
            save_every=0,
        )
        print(
            f"training a ViT from scratch (patch {args.patch}, dim {args.dim}, depth {args.depth}) "
            f"for {args.steps} steps of {args.batch_size} images on {args.threads} CPU thread(s)"
        )
        train(net, train_set, settings, val_set=None, device="cpu")
        trained = time.perf_counter()

        scores = evaluate(net, val_set, device="cpu", pseudo_labels=True, bkg_thre=SWEEP, flip=True)
        best_thre = max(SWEEP, key=lambda t: scores[f"cam@{t:.2f}"].miou)
        baseline = background_only_miou(val_set, net.config.ignore_index)
        if args.num_samples:
            grid = sample_grid(net, val_set, list(range(args.num_samples)), SWEEP[0], args.zoom)
            to_pil(grid).save(out_dir / "samples.png")
        total = time.perf_counter() - tic
        results: dict[str, Any] = {
            "cam_miou": 100 * scores["cam@0.50"].miou,
            "cam_best_miou": 100 * scores[f"cam@{best_thre:.2f}"].miou,
            "cam_best_threshold": best_thre,
            "pseudo_label_miou": 100 * scores["pseudo"].miou,
            "pseudo_train_miou": 100 * scores["pseudo_train"].miou,
            "pseudo_train_coverage": 100 * scores["pseudo_train_coverage"].pixel_accuracy,
            "seg_miou": 100 * scores["seg"].miou,
            "baseline_background_miou": 100 * baseline,
            "iterations": args.steps,
            "wall_time_s": total,
            "train_time_s": trained - tic,
            "images": {"train": args.num_train, "val": args.num_val, "size": args.size},
            "settings": vars(args),
            "machine": {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor()},
            "scores": scores_record(scores, val_set.class_names),
            "samples": "samples.png" if args.num_samples else None,
        }
        write_json(out_dir / "metrics.json", results)

        print(
            f"\nsynthetic val ({len(val_set)} images), mIoU (%) over background + {net.num_classes} classes:"
        )
        rows = [
            ("all background (baseline)", results["baseline_background_miou"]),
            ("CAM, background threshold 0.50", results["cam_miou"]),
            (f"CAM, best threshold ({best_thre:.2f})", results["cam_best_miou"]),
            ("CAM + PAR refinement, threshold 0.50", results["pseudo_label_miou"]),
            ("training target (0.25/0.70 + PAR)", results["pseudo_train_miou"]),
            ("segmentation (decoder, flip)", results["seg_miou"]),
        ]
        for name, value in rows:
            print(f"  {name + ':':40s}{value:6.2f}")
        print(f"  (the training target labels {results['pseudo_train_coverage']:.1f} % of the pixels)")
        verdict = "better" if results["pseudo_label_miou"] > results["cam_best_miou"] else "NOT better"
        print(f"refined labels are {verdict} than the raw CAM labels at their best threshold")
        print(f"time: {results['train_time_s']:.0f}s data + training, {total:.0f}s in total")
        written = ["metrics.json"] + (["samples.png"] if args.num_samples else [])
        print(f"results: {', '.join(str(out_dir / name) for name in written)}")
        return results
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """The ``mcc-demo`` command: :func:`run`, exit status 0 (the results are in ``metrics.json``); a user's
    mistake: one line on stderr and status 2 (:func:`mcc.cli._common.run_cli`)."""
    run_cli("mcc-demo", run, argv)


if __name__ == "__main__":
    main()
