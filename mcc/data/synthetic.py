"""Command line of the synthetic VOC generator: ``python -m mcc.data.synthetic --out DIR ...``.

Kept apart from :mod:`mcc.data.synthetic_voc` so that ``python -m`` does not run a module the package
has already imported.
"""

import argparse

from mcc.data.synthetic_voc import make_synthetic_voc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write a synthetic VOC-layout dataset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output root")
    parser.add_argument("--num-train", type=int, default=200, help="images of the 'train' split")
    parser.add_argument("--num-val", type=int, default=50, help="images of the 'val' split")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images")
    parser.add_argument("--ignore-border", type=int, default=0, help="255 band around objects, in pixels")
    args = parser.parse_args(argv)
    root = make_synthetic_voc(
        args.out, args.num_train, args.num_val, args.size, args.seed, ignore_border=args.ignore_border
    )
    print(f"wrote {args.num_train} train + {args.num_val} val images of {args.size}px to {root}")


if __name__ == "__main__":
    main()
