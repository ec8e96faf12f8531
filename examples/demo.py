"""MCC end to end on CPU in a few minutes: synthetic VOC, a small ViT from scratch, CAM vs pseudo labels.

    make demo        # = HF_HUB_OFFLINE=1 .venv/bin/python examples/demo.py

1. writes the built-in synthetic VOC (``mcc.data.make_synthetic_voc``: textured shapes on clutter, exact
   masks) into the work directory;
2. trains a small timm ``VisionTransformer`` from random initialisation with the library's training loop
   (``mcc.training.train``) and the released MCC preset, its schedule scaled down (warm-up, start of the
   segmentation loss, switch to final-CAM positives) and the key-mask cell scaled to the smaller token grid;
3. scores on the synthetic validation split: the CAM labels (background threshold 0.5, and the best of a
   sweep), the PAR-refined pseudo labels (the training step's segmentation target) and the decoder's
   segmentation.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from mcc.data import VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.network import MCCConfig, MCCNet
from mcc.training import TrainSettings, evaluate, train

# 0.5 first: the published CAM threshold, also the background level of the refined "pseudo" label.
SWEEP = (0.5, 0.3, 0.35, 0.4, 0.45, 0.55, 0.6, 0.65, 0.7, 0.75)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder, removed at the end")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="image side and crop size, pixels")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=6e-4, help="encoder lr; heads x10 (released preset)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (more threads than free cores is much slower)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tic = time.perf_counter()
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
        net = MCCNet(vit, train_set.num_classes - 1, demo_config(args.steps))
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
        results = {
            "cam@0.50": scores["cam@0.50"].miou,
            "cam_best": scores[f"cam@{best_thre:.2f}"].miou,
            "cam_best_thre": best_thre,
            "pseudo": scores["pseudo"].miou,
            "pseudo_train": scores["pseudo_train"].miou,
            "pseudo_train_coverage": scores["pseudo_train_coverage"].pixel_accuracy,
            "seg": scores["seg"].miou,
            "train_s": trained - tic,
            "total_s": time.perf_counter() - tic,
        }
        print(f"\nsynthetic val ({len(val_set)} images), mIoU over background + 5 classes:")
        rows = [
            ("CAM, background threshold 0.50", results["cam@0.50"]),
            (f"CAM, best threshold ({best_thre:.2f})", results["cam_best"]),
            ("CAM + PAR refinement, threshold 0.50", results["pseudo"]),
            ("training target (0.25/0.70 + PAR)", results["pseudo_train"]),
            ("segmentation (decoder, flip)", results["seg"]),
        ]
        for name, value in rows:
            print(f"  {name + ':':40s}{100 * value:6.2f}")
        print(f"  (the training target labels {100 * results['pseudo_train_coverage']:.1f} % of the pixels)")
        verdict = "better" if results["pseudo"] > results["cam_best"] else "NOT better"
        print(f"refined labels are {verdict} than the raw CAM labels at their best threshold")
        print(f"time: {results['train_s']:.0f}s data + training, {results['total_s']:.0f}s in total")
        return results
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
