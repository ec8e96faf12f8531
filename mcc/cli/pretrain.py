"""Pretrain the small CPU ViT on synthetic shapes: a stand-in for ImageNet weights, made once.

    python -m mcc.cli.pretrain --out runs/pretrain/standin_vit.pt

renders a separate synthetic multi-label set (:mod:`mcc.data.synthetic_shapes`: 16 shape x texture
classes, none of them a synthetic-VOC class, random hues, other seeds), trains a timm
``VisionTransformer`` (default: patch 8, width 96, depth 4, 4 heads, 64 px, the demo's encoder) as a
classifier on it, and writes the encoder weights (no head) with their shape. An existing file is kept
(``--force`` remakes it). Load it with :func:`mcc.training.pretrain.load_standin`.

It is a stand-in, not ImageNet: tiny, 16 classes, the same drawing code as the synthetic VOC.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from mcc.cli._common import ArgumentParser, positive_float, positive_int, run_cli
from mcc.data.synthetic_shapes import SyntheticShapes
from mcc.training.pretrain import PretrainSettings, ViTArch, load_standin, pretrain_vit, save_standin

DEFAULT_OUT = "runs/pretrain/standin_vit.pt"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m mcc.cli.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="checkpoint to write (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="remake the checkpoint even if it exists")
    parser.add_argument(
        "--num-train", type=positive_int, default=6000, help="training images (default: %(default)s)"
    )
    parser.add_argument(
        "--num-val", type=positive_int, default=500, help="held-out images (default: %(default)s)"
    )
    parser.add_argument(
        "--data-seed", type=int, default=1000, help="seed of the images (default: %(default)s)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=64, help="image side, pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--patch", type=positive_int, default=8, help="patch side, pixels (default: %(default)s)"
    )
    parser.add_argument("--dim", type=positive_int, default=96, help="token width (default: %(default)s)")
    parser.add_argument("--depth", type=positive_int, default=4, help="blocks (default: %(default)s)")
    parser.add_argument(
        "--heads", type=positive_int, default=4, help="attention heads (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=1500, help="optimiser steps (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per step (default: %(default)s)"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=1e-3, help="peak learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initialisation and batch order (default: %(default)s)"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=1, help="torch CPU threads (default: %(default)s)"
    )
    return parser


def ensure_standin(out: str | Path, argv: list[str] | None = None, log=print) -> Path:
    """Makes the stand-in checkpoint at ``out`` unless it exists; ``argv``: further options of the parser."""
    args = build_parser().parse_args([*(argv or []), "--out", str(out)])
    return _run(args, log)


def _run(args: argparse.Namespace, log) -> Path:
    out = Path(args.out)
    if out.is_file() and not args.force:
        _, meta = load_standin(out)  # fails loudly on a file that is not a stand-in
        val_map = 100 * (meta.get("val") or {}).get("mAP", float("nan"))
        log(f"stand-in checkpoint exists: {out} (val mAP {val_map:.1f})")
        return out
    torch.set_num_threads(args.threads)
    arch = ViTArch(args.size, args.patch, args.dim, args.depth, args.heads)
    settings = PretrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    log(f"rendering {args.num_train} + {args.num_val} synthetic shape images of {args.size} px")
    train_set = SyntheticShapes(args.num_train, args.size, args.data_seed, flip=True)
    val_set = SyntheticShapes(args.num_val, args.size, args.data_seed, offset=args.num_train)
    torch.manual_seed(args.seed)
    vit = arch.build(num_classes=train_set.num_classes)
    log(f"pretraining {arch} for {args.steps} steps of {args.batch_size} on {args.threads} thread(s)")
    result = pretrain_vit(vit, train_set, settings, val_set=val_set, log=log)
    meta = {
        "what": "stand-in for ImageNet weights: multi-label classifier on mcc.data.synthetic_shapes",
        "classes": train_set.class_names,
        "data": {
            "num_train": args.num_train,
            "num_val": args.num_val,
            "seed": args.data_seed,
            "size": args.size,
        },
        "settings": asdict(settings),
        "val": result["val"],
        "final_loss": result["history"][-1]["loss"],
        "wall_time_s": result["wall_time_s"],
    }
    save_standin(out, vit, arch, meta)
    (out.parent / (out.stem + ".json")).write_text(
        json.dumps({**meta, "arch": asdict(arch)}, indent=2) + "\n"
    )
    log(f"wrote {out} ({result['wall_time_s']:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> Path:
    """``python -m mcc.cli.pretrain``: a user's mistake is one line on stderr and exit status 2."""
    parser = build_parser()
    return run_cli(parser.prog, lambda: _run(parser.parse_args(argv), print))


if __name__ == "__main__":
    main()
