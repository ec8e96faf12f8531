"""Score a training checkpoint and write its results: ``mcc-evaluate`` (``python -m mcc.cli.evaluate``).

    mcc-evaluate --checkpoint work_dirs/mcc_voc/best.pt --data-root VOCdevkit/VOC2012 --crf --out-dir eval
    mcc-evaluate ... --out-dir eval --save-pred --save-vis 20       # + eval/pred/*.png, eval/vis/*.jpg
    mcc-evaluate ... --split test --out-dir test_run --crf           # VOC test: server files + archive
    torchrun --nproc_per_node=4 -m mcc.cli.evaluate --checkpoint ... --data-root ...   # images split

Scores (docs/method.md section 4): CAM labels (multi-scale CAM with the ground-truth image labels,
background threshold ``--bkg-thre``: VOC 0.5, COCO 0.45), pseudo labels (the CAMs refined by PAR at one
background level, and the training step's three-way target on the pixels it labels), and the
segmentation (multi-scale ``--scales`` + flip, optionally the dense CRF ``(10, 1, 1, 121, 5, 4)``).
With ``--out-dir``: ``metrics.json`` with the printed numbers, and the files of ``--save-pred`` and
``--save-vis``; a split without ground truth writes the evaluation server's layout and an archive
(docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mcc.cli._common import (
    ArgumentParser,
    HelpFormatter,
    add_data_arguments,
    add_run_arguments,
    check_classes,
    make_crf,
    non_negative_int,
    open_split,
    positive_float,
    run_cli,
    unit_float,
    use_net_pixel_stats,
)
from mcc.training import (
    cleanup_distributed,
    evaluate_to_dir,
    init_distributed,
    net_from_checkpoint,
    scores_record,
)
from mcc.training.evaluation import evaluate

__all__ = ["build_parser", "main", "run"]

LABELS = {
    "cam": "CAM",
    "pseudo": "pseudo labels (PAR)",
    "pseudo_train": "training target (PAR, 3-way), on its labelled pixels",
    "seg": "segmentation",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``mcc-evaluate`` command line."""
    parser = ArgumentParser(prog="mcc-evaluate", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mcc-train-voc / mcc-train-coco")
    add_data_arguments(parser, split="val")
    scores = parser.add_argument_group("scores")
    scores.add_argument(
        "--scales", type=positive_float, nargs="+", default=[1.0, 1.25, 1.5], help="segmentation scales"
    )
    scores.add_argument("--no-flip", action="store_true", help="no horizontal flip in the segmentation")
    scores.add_argument(
        "--crf", action="store_true", help="dense CRF on the segmentation (torch on CUDA, else pydensecrf)"
    )
    scores.add_argument(
        "--bkg-thre",
        type=unit_float,
        nargs="+",
        default=[0.5],
        help="CAM background threshold(s); several: a sweep, scored as cam@<thre> each",
    )
    scores.add_argument("--no-cams", action="store_true", help="skip CAM and pseudo-label scores")
    scores.add_argument("--no-pseudo", action="store_true", help="skip the pseudo-label scores")
    scores.add_argument("--no-seg", action="store_true", help="skip the segmentation score")
    scores.add_argument("--per-class", action="store_true", help="print the IoU of every class")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--out-dir", default=None, help="write metrics.json (and --save-pred / --save-vis files) here"
    )
    outputs.add_argument(
        "--save-pred", action="store_true", help="write <out-dir>/pred/<id>.png (palette PNG, class indices)"
    )
    outputs.add_argument(
        "--save-vis",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="write N pictures <out-dir>/vis/<id>.<fmt>: image | CAM | CAM+PAR | prediction | truth",
    )
    outputs.add_argument("--vis-format", choices=("jpg", "png"), default="jpg", help="picture format")
    add_run_arguments(parser)
    return parser


def _print_scores(record: dict, class_names: list[str], args: argparse.Namespace, crf: bool) -> None:
    for name, score in record.items():
        label = LABELS.get(name, name)
        if name == "seg":
            label += f" (scales {args.scales}{'' if args.no_flip else ' + flip'}{' + CRF' if crf else ''})"
        miou = score["miou"]
        print(f"{label}: mIoU {'n/a' if miou is None else f'{miou:.2f}'}")
        if "coverage" in score and score["coverage"] is not None:
            print(f"training target labels {score['coverage']:.1f} % of the pixels")
        if args.per_class:
            for class_name in class_names:
                iou = score["per_class_iou"][class_name]
                print(f"    {class_name:>16s} {'n/a' if iou is None else f'{iou:6.2f}'}")


def run(argv: list[str] | None = None) -> dict:
    """Parses the command line, scores, writes the files; returns the ``metrics.json`` record."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.save_vis < 0:
        parser.error(f"--save-vis must be >= 0, got {args.save_vis}")
    if (args.save_pred or args.save_vis) and not args.out_dir:
        parser.error("--save-pred and --save-vis need --out-dir")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    try:
        dataset = open_split(args)  # every bad id and missing file named before any work
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    has_truth = dataset.labels is not None
    if not has_truth and not args.out_dir:
        parser.error(
            f"split {args.split!r} has no ground truth: nothing to score; give --out-dir for its files"
        )
    if not has_truth and args.no_seg:
        parser.error("--no-seg: a split without ground truth has only the segmentation to write")

    context = init_distributed(args.device, timeout_s=args.dist_timeout)
    try:
        net = net_from_checkpoint(args.checkpoint).to(context.device)
        check_classes(dataset, net, args.data_root)
        use_net_pixel_stats(dataset, net)  # the run's image normalisation (CLIP's for CLIP)
        crf = make_crf(context.device) if args.crf else None
        cams = has_truth and not args.no_cams
        options = dict(
            device=context.device,
            cams=cams,
            pseudo_labels=cams and not args.no_pseudo,
            segmentation=not args.no_seg,
            bkg_thre=args.bkg_thre,
            seg_scales=args.scales,
            flip=not args.no_flip,
            crf=crf,
            max_images=args.max_images,
            autocast_dtype=torch.bfloat16 if args.amp else None,
            progress=sys.stderr.isatty(),
        )
        settings = {
            "scales": args.scales,
            "flip": not args.no_flip,
            "crf": repr(crf) if crf is not None else None,
            "bkg_thre": args.bkg_thre,
            "cam_scales": list(net.config.cam_scales),
            "low_thre": net.config.low_thre,
            "high_thre": net.config.high_thre,
            "amp": args.amp,
            "world_size": context.world_size,
        }
        tic = time.perf_counter()
        if args.out_dir:
            record = evaluate_to_dir(
                net,
                dataset,
                args.out_dir,
                save_pred=args.save_pred,
                save_vis=args.save_vis,
                vis_format=args.vis_format,
                checkpoint=args.checkpoint,
                settings=settings,
                rank=context.rank,
                world_size=context.world_size,
                **options,
            )
        else:
            scores = evaluate(net, dataset, rank=context.rank, world_size=context.world_size, **options)
            count = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
            record = {"split": args.split, "num_images": count, "checkpoint": args.checkpoint}
            record.update(settings=settings, scores=scores_record(scores, dataset.class_names))
        if context.is_main:
            print(f"{args.split}: {record['num_images']} images in {time.perf_counter() - tic:.1f}s")
            _print_scores(record["scores"], dataset.class_names, args, crf is not None)
            if args.out_dir:
                print(f"metrics: {args.out_dir}/metrics.json")
            if "archive" in record:
                print(
                    f"test-server files: {args.out_dir}/{record['server_files']}, archive "
                    f"{args.out_dir}/{record['archive']} (upload it as described in docs/evaluation.md)"
                )
        return record
    finally:
        cleanup_distributed()
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (returns nothing, so the exit status is 0 on success; a user's mistake:
    one line on stderr and status 2, see :func:`mcc.cli._common.run_cli`)."""
    run_cli("mcc-evaluate", run, argv)


if __name__ == "__main__":
    main()
