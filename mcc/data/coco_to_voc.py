"""Command line of the COCO converter: ``python -m mcc.data.coco_to_voc --coco-root ... --out ...``.

Kept apart from :mod:`mcc.data.coco` so that ``python -m`` does not run a module the package has
already imported.
"""

import argparse

from mcc.data.coco import COCO_SPLITS, coco_to_voc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert COCO 2014 instances to VOC-style masks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--coco-root", required=True, help="folder with annotations/ and train2014/, val2014/"
    )
    parser.add_argument("--out", required=True, help="output root in VOC layout")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train2014", "val2014"],
        choices=sorted(COCO_SPLITS),
        help="COCO image folders to convert",
    )
    parser.add_argument("--copy-images", action="store_true", help="copy images instead of symlinking")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    root = coco_to_voc(
        args.coco_root, args.out, args.splits, copy_images=args.copy_images, progress=not args.no_progress
    )
    print(f"wrote a VOC-layout COCO root to {root}")


if __name__ == "__main__":
    main()
