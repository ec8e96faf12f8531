"""Pseudo labels of a split for a second training stage: ``mcc-pseudo-labels``.

    mcc-pseudo-labels --checkpoint work_dirs/mcc_voc/best.pt --data-root VOCdevkit/VOC2012 --out-dir pl
    mcc-pseudo-labels ... --kind train                 # the training step's three-way target (255 kept)
    mcc-pseudo-labels ... --kind train --fill-ignore    # ... with its uncertain pixels filled
    torchrun --nproc_per_node=4 -m mcc.cli.pseudo_labels --checkpoint ... --data-root ... --out-dir pl

One palette PNG per image, ``<out-dir>/<id>.png`` (class indices, 255 = ignore): multi-scale + flip CAM
of the checkpoint's final classifier with the image labels, refined by PAR (docs/method.md sections 2
and 4), optionally a dense CRF. Interrupted runs resume: ids already written are skipped (files are
written atomically). ``<out-dir>/metrics.json`` holds the mIoU against the ground truth where the split
has it (VOC ``train_aug`` does, through SBD) - the paper's pseudo-label row. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from mcc.cli._common import (
    ArgumentParser,
    HelpFormatter,
    add_data_arguments,
    add_run_arguments,
    check_classes,
    make_crf,
    open_split,
    positive_float,
    run_cli,
    unit_float,
    use_net_pixel_stats,
)
from mcc.training import cleanup_distributed, init_distributed, make_pseudo_labels, net_from_checkpoint
from mcc.training.pseudo_labels import SettingsMismatchError

__all__ = ["build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mcc-pseudo-labels`` command line."""
    parser = ArgumentParser(prog="mcc-pseudo-labels", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mcc-train-voc / mcc-train-coco")
    parser.add_argument("--out-dir", required=True, help="folder of the PNGs and metrics.json")
    add_data_arguments(parser, split="train_aug")
    labels = parser.add_argument_group("labels")
    labels.add_argument(
        "--kind",
        choices=("complete", "train"),
        default="complete",
        help="complete: every pixel labelled at --bkg-thre; train: the training step's three-way target "
        "(the checkpoint's low_thre/high_thre, 255 where uncertain)",
    )
    labels.add_argument(
        "--fill-ignore",
        action="store_true",
        help="give the uncertain (255) pixels of --kind train the complete label's class",
    )
    labels.add_argument(
        "--bkg-thre", type=unit_float, default=0.5, help="background level of the complete label (COCO: 0.45)"
    )
    labels.add_argument(
        "--scales",
        type=positive_float,
        nargs="+",
        default=None,
        help="CAM scales (None: the checkpoint's cam_scales)",
    )
    labels.add_argument("--no-flip", action="store_true", help="no horizontally flipped CAMs")
    labels.add_argument(
        "--crf", action="store_true", help="dense CRF (10, 1, 1, 121, 5, 4) over each label's classes"
    )
    labels.add_argument(
        "--crf-confidence", type=float, default=0.7, help="CRF unary: probability of each pixel's label"
    )
    labels.add_argument("--overwrite", action="store_true", help="recompute ids whose PNG exists")
    add_run_arguments(parser)
    return parser


def _make(args: argparse.Namespace, net, dataset, crf, context) -> dict:
    return make_pseudo_labels(
        net,
        dataset,
        args.out_dir,
        kind=args.kind,
        bkg_thre=args.bkg_thre,
        fill_ignore=args.fill_ignore,
        scales=args.scales,
        flip=not args.no_flip,
        crf=crf,
        crf_confidence=args.crf_confidence,
        overwrite=args.overwrite,
        device=context.device,
        rank=context.rank,
        world_size=context.world_size,
        max_images=args.max_images,
        autocast_dtype=torch.bfloat16 if args.amp else None,
        settings={"checkpoint": str(Path(args.checkpoint).resolve()), "world_size": context.world_size},
    )


def run(argv: list[str] | None = None) -> dict:
    """Parses the command line, writes the pseudo labels; returns the ``metrics.json`` record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    if args.ground_truth == "no":
        parser.error("--ground-truth no: pseudo labels need the image labels, which come from the masks")
    args.ground_truth = "yes"
    try:
        dataset = open_split(args)  # every bad id and missing file named before any work
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))

    context = init_distributed(args.device, timeout_s=args.dist_timeout)
    try:
        net = net_from_checkpoint(args.checkpoint).to(context.device)
        check_classes(dataset, net, args.data_root)
        use_net_pixel_stats(dataset, net)  # the run's image normalisation (CLIP's for CLIP)
        crf = make_crf(context.device) if args.crf else None
        tic = time.perf_counter()
        try:
            record = _make(args, net, dataset, crf, context)
        except SettingsMismatchError as error:
            parser.error(str(error))
        if context.is_main:
            print(
                f"{args.split}: {record['num_images']} pseudo labels ({args.kind}) in {args.out_dir}: "
                f"{record['written']} written, {record['skipped']} already there, "
                f"{time.perf_counter() - tic:.1f}s"
            )
            for name, score in record.get("scores", {}).items():
                miou = score["miou"]
                print(f"{name}: mIoU {'n/a' if miou is None else f'{miou:.2f}'} against the ground truth")
            if record.get("coverage") is not None:
                print(f"labelled pixels: {record['coverage']:.1f} %")
        return record
    finally:
        cleanup_distributed()
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (returns nothing, so the exit status is 0 on success; a user's mistake:
    one line on stderr and status 2, see :func:`mcc.cli._common.run_cli`)."""
    run_cli("mcc-pseudo-labels", run, argv)


if __name__ == "__main__":
    main()
