"""Score a checkpoint of ``train_voc.py`` / ``train_coco.py``: CAM, pseudo-label and segmentation mIoU.

    python examples/evaluate.py --checkpoint work_dirs/mcc_voc/best.pt --data-root VOCdevkit/VOC2012 --crf
    torchrun --nproc_per_node=4 examples/evaluate.py --checkpoint ... --data-root ...  # images split

Segmentation: multi-scale (default 1.0 1.25 1.5) + flip, optionally dense CRF ``(10, 1, 1, 121, 5, 4)``
(docs/method.md section 4). CAMs: multi-scale CAM with the ground-truth image labels, background threshold
``--bkg-thre`` (VOC 0.5, COCO 0.45); pseudo labels: the CAMs refined by PAR against one background
level (``--bkg-thre``), and the training step's three-way target scored where it labels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import net_from_checkpoint  # noqa: E402

from mcc.data import VOCSegmentation  # noqa: E402
from mcc.training import cleanup_distributed, evaluate, init_distributed, load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[1.0, 1.25, 1.5], help="segmentation scales"
    )
    parser.add_argument("--no-flip", action="store_true", help="no horizontal flip in the segmentation")
    parser.add_argument("--crf", action="store_true", help="dense CRF on the segmentation (needs pydensecrf)")
    parser.add_argument(
        "--bkg-thre", type=float, nargs="+", default=[0.5], help="CAM background threshold(s)"
    )
    parser.add_argument("--no-cams", action="store_true", help="skip CAM and pseudo-label scores")
    parser.add_argument("--no-pseudo", action="store_true", help="skip the pseudo-label score")
    parser.add_argument("--no-seg", action="store_true", help="skip the segmentation score")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--per-class", action="store_true", help="print the IoU of every class")
    args = parser.parse_args(argv)

    context = init_distributed(args.device)
    try:
        net = net_from_checkpoint(load_checkpoint(args.checkpoint, map_location="cpu")).to(context.device)
        dataset = VOCSegmentation(args.data_root, args.split)
        crf = None
        if args.crf:
            from mcc.refine import DenseCRF

            crf = DenseCRF(10, 1, 1, 121, 5, 4)
        tic = time.perf_counter()
        scores = evaluate(
            net,
            dataset,
            device=context.device,
            cams=not args.no_cams,
            pseudo_labels=not (args.no_cams or args.no_pseudo),
            segmentation=not args.no_seg,
            bkg_thre=args.bkg_thre,
            seg_scales=args.scales,
            flip=not args.no_flip,
            crf=crf,
            max_images=args.max_images,
            rank=context.rank,
            world_size=context.world_size,
            progress=True,
        )
        if context.is_main:
            count = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
            print(f"{args.split}: {count} images in {time.perf_counter() - tic:.1f}s")
            labels = {
                "cam": "CAM",
                "pseudo": "pseudo labels (PAR)",
                "pseudo_train": "training target (PAR, 3-way), on its labelled pixels",
                "seg": "segmentation",
            }
            for name, score in scores.items():
                if name == "pseudo_train_coverage":
                    print(f"training target labels {100 * score.pixel_accuracy:.1f} % of the pixels")
                    continue
                label = labels.get(name, name)
                if name == "seg":
                    label += (
                        f" (scales {args.scales}{'' if args.no_flip else ' + flip'}{' + CRF' if crf else ''})"
                    )
                print(f"{label}: mIoU {100 * score.miou:.2f}")
                if args.per_class:
                    for class_name, iou in zip(dataset.class_names, score.iou.tolist(), strict=True):
                        print(f"    {class_name:>16s} {100 * iou:6.2f}")
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main()
