"""Masks and tags for any images from a checkpoint: ``mcc-predict`` (``python -m mcc.cli.predict``).

    mcc-predict --checkpoint work_dirs/mcc_tags/last.pt --out-dir masks photos/
    mcc-predict --checkpoint ... --out-dir masks --overlay --crf "new/*.jpg" one.png
    torchrun --nproc_per_node=4 -m mcc.cli.predict --checkpoint ... --out-dir masks photos/

An INPUT is an image file, a folder (searched recursively) or a glob. For each image:
``<out-dir>/<path relative to its input folder, without extension>.png``, a palette PNG at the image's
size (0 = background, i = the i-th class of the checkpoint, listed in ``<out-dir>/classes.txt``), and a
line of ``<out-dir>/predictions.jsonl`` with the predicted tags, every class's score and its share of the
pixels; with ``--overlay`` also ``<out-dir>/overlays/<name>.jpg``. The masks are ``mcc-evaluate``'s
segmentation with the same ``--scales`` / ``--no-flip`` / ``--crf``. Images done by an earlier run are
skipped (``--overwrite`` redoes them); files are written atomically. See docs/own-data.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch

from mcc.cli._common import (
    ArgumentParser,
    HelpFormatter,
    add_run_arguments,
    make_crf,
    non_negative_int,
    run_cli,
)
from mcc.data.layout import VOC_CLASSES
from mcc.training import (
    CheckpointError,
    cleanup_distributed,
    init_distributed,
    load_checkpoint,
    net_from_checkpoint,
)
from mcc.training.predict import check_images, find_images, predict_to_dir
from mcc.training.pseudo_labels import SettingsMismatchError

__all__ = ["build_parser", "checkpoint_class_names", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mcc-predict`` command line."""
    parser = ArgumentParser(prog="mcc-predict", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of mcc-train / mcc-train-voc / ...")
    parser.add_argument(
        "--out-dir", required=True, help="folder of the masks, classes.txt, predictions.jsonl"
    )
    masks = parser.add_argument_group("masks")
    masks.add_argument(
        "--scales", type=float, nargs="+", default=[1.0, 1.25, 1.5], help="segmentation scales"
    )
    masks.add_argument("--no-flip", action="store_true", help="no horizontal flip")
    masks.add_argument(
        "--crf", action="store_true", help="dense CRF on the segmentation (torch on CUDA, else pydensecrf)"
    )
    masks.add_argument(
        "--tag-threshold",
        type=float,
        default=0.5,
        help="classifier probability from which a tag is predicted",
    )
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument(
        "--overlay",
        action="store_true",
        help="also write overlays/<name>.jpg: the image blended with its mask",
    )
    outputs.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    outputs.add_argument(
        "--skip-bad",
        action="store_true",
        help="go on past unreadable or non-image inputs listing them at the end (else: stop before any work)",
    )
    outputs.add_argument(
        "--batch-size", type=int, default=1, help="images per forward pass (same-size images)"
    )
    outputs.add_argument(
        "--num-workers", type=non_negative_int, default=2, help="processes decoding the images (0: none)"
    )
    add_run_arguments(parser)
    return parser


def checkpoint_class_names(state: dict, num_classes: int) -> list[str]:
    """The class names a checkpoint records (background first), or defaults with a warning.

    Checkpoints of ``mcc-train`` (and of the other training commands since they record them) carry
    ``config.extra.class_names``. Older ones: the VOC names for 20 classes, else ``class_1``, ...
    """
    extra = (state.get("config") or {}).get("extra") or {}
    names = extra.get("class_names")
    if isinstance(names, list) and len(names) == num_classes + 1:
        return [str(name) for name in names]
    if num_classes == len(VOC_CLASSES) - 1:
        fallback = list(VOC_CLASSES)
    else:
        fallback = ["background"] + [f"class_{i}" for i in range(1, num_classes + 1)]
    warnings.warn(
        f"the checkpoint records no class names; using {', '.join(fallback[1:4])}, ... "
        f"({'the VOC classes' if fallback[1] == VOC_CLASSES[1] else 'numbered'})",
        UserWarning,
        stacklevel=2,
    )
    return fallback


def _listing(bad: list[tuple[object, str]], limit: int = 10) -> str:
    shown = "; ".join(f"{path}: {reason}" for path, reason in bad[:limit])
    return shown + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")


def run(argv: list[str] | None = None) -> dict:
    """Parses the command line, predicts, writes the files; returns the summary of
    :func:`~mcc.training.predict.predict_to_dir`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.tag_threshold <= 1.0:
        parser.error(f"--tag-threshold must be in [0, 1], got {args.tag_threshold}")
    if any(not s > 0 for s in args.scales):
        parser.error(f"--scales must be > 0, got {args.scales}")
    try:
        images = find_images(args.inputs, exclude=args.out_dir)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    try:
        state = load_checkpoint(args.checkpoint)
        net = net_from_checkpoint(state)
    except (FileNotFoundError, CheckpointError) as error:
        parser.error(" ".join(f"--checkpoint: {error}".split()))  # torch's messages span lines
    class_names = checkpoint_class_names(state, net.num_classes)
    del state

    context = init_distributed(args.device, timeout_s=args.dist_timeout)
    try:
        # every input checked before any work: each rank its share, then all ranks know every bad file
        bad = check_images([item.path for item in images[context.rank :: context.world_size]])
        if context.distributed:
            import torch.distributed as dist

            gathered: list = [None] * context.world_size
            dist.all_gather_object(gathered, bad)
            bad = [entry for part in gathered for entry in part]
        if bad and not args.skip_bad:
            parser.error(
                f"{len(bad)} input(s) are not readable images (nothing was written; --skip-bad goes on "
                f"without them): {_listing(bad)}",
            )
        bad_paths = {str(path) for path, _ in bad}
        todo = [item for item in images if str(item.path) not in bad_paths]
        net = net.to(context.device)
        crf = make_crf(context.device) if args.crf else None
        tic = time.perf_counter()
        try:
            summary = predict_to_dir(
                net,
                todo,
                args.out_dir,
                class_names,
                overlay=args.overlay,
                overwrite=args.overwrite,
                skip_bad=args.skip_bad,
                num_workers=args.num_workers,
                rank=context.rank,
                world_size=context.world_size,
                settings={"checkpoint": str(args.checkpoint)},
                scales=tuple(args.scales),
                flip=not args.no_flip,
                crf=crf,
                tag_threshold=args.tag_threshold,
                batch_size=args.batch_size,
                device=context.device,
                autocast_dtype=torch.bfloat16 if args.amp else None,
            )
        except SettingsMismatchError as error:
            parser.error(str(error))
        except ValueError as error:  # an image that fails to decode (truncated) without --skip-bad
            parser.error(f"{error} (files written so far are kept; --skip-bad goes on past such images)")
        summary["bad"] = [[str(p), r] for p, r in bad] + summary["bad"]
        if context.is_main:
            print(
                f"{summary['num_images']} images in {time.perf_counter() - tic:.1f}s: {summary['written']} "
                f"written, {summary['skipped']} already done; masks, classes.txt and predictions.jsonl in "
                f"{args.out_dir}"
            )
            if summary["bad"]:
                count, listing = len(summary["bad"]), _listing(summary["bad"])
                print(f"mcc-predict: skipped {count} unreadable input(s): {listing}", file=sys.stderr)
        return summary
    finally:
        cleanup_distributed()
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (returns nothing, so the exit status is 0 on success; a user's mistake:
    one line on stderr and status 2, see :func:`mcc.cli._common.run_cli`)."""
    run_cli("mcc-predict", run, argv)


if __name__ == "__main__":
    main()
