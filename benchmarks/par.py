"""PAR and the segmentation pseudo label: library path vs plain (published-style) path.

Two settings: "train" (one 448x448 image, 20 classes of which 3 present, ``down_scale=2``: PAR runs at
224x224 on background + 3 classes) and "eval" (one 375x500 VOC-size image; PAR alone on all 21 maps at
full size, and the pseudo label with 3 present classes at ``down_scale=2``). The plain path unfolds all
48 neighbours of every mask at once (a (B, C, 48, H, W) tensor) and selects present classes image by
image; the library accumulates neighbour by neighbour and batches the selection. Every configuration
runs in its own process (see ``common.py``). Prints a table, then one JSON line.

    python benchmarks/par.py                    # CPU, 1 thread
    python benchmarks/par.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from common import HelpFormatter, environment, measure, run_child

from mcc.refine import PAR, refine_cams_with_background

# The plain references live with the tests, which check the library against them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "refine"))
from par_reference import reference_par, reference_refine  # noqa: E402

SETTINGS = {
    # name: (image size, PAR-alone masks (channels, size), number of present classes)
    "train": ((448, 448), (4, (224, 224)), 3),
    "eval": ((375, 500), (21, (375, 500)), 3),
}


def child(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image_size, (channels, par_size), num_present = SETTINGS[args.setting]
    if args.what == "par":
        images = torch.rand(1, 3, *par_size, device=device)
        masks = torch.rand(1, channels, *par_size, device=device).softmax(1)
        par = PAR()
        run = (lambda: par(images, masks)) if args.path == "fast" else (lambda: reference_par(images, masks))
    else:
        images = torch.rand(1, 3, *image_size, device=device)
        cams = torch.rand(1, 20, *image_size, device=device)
        cls_label = torch.zeros(1, 20, device=device)
        cls_label[0, torch.randperm(20)[:num_present]] = 1
        if args.path == "fast":
            par = PAR()

            def run():
                return refine_cams_with_background(par, images, cams, cls_label)
        else:

            def run():
                return reference_refine(reference_par, images, cams, cls_label)

    def step():
        with torch.no_grad():
            run()

    return measure(step, device, warmup=1, repeats=args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cpu", help="where it runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU here is shared)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", choices=tuple(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--what", choices=("par", "refine"), help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=("fast", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    torch.set_num_threads(args.threads)
    print(f"# {environment()}")
    header = ("setting", "what", "fast s", "plain s", "speed-up", "fast MB", "plain MB")
    print("{:8} {:7} {:>8} {:>8} {:>9} {:>8} {:>9}".format(*header))
    results = {}
    for setting in SETTINGS:
        for what in ("par", "refine"):
            runs = {}
            for path in ("fast", "plain"):
                common = [
                    "--device",
                    args.device,
                    "--threads",
                    str(args.threads),
                    "--repeats",
                    str(args.repeats),
                ]
                runs[path] = run_child(
                    __file__, [*common, "--setting", setting, "--what", what, "--path", path]
                )
            fast, plain = runs["fast"], runs["plain"]
            row = {
                "fast_s": round(fast["median_s"], 4),
                "plain_s": round(plain["median_s"], 4),
                "speedup": round(plain["median_s"] / fast["median_s"], 2),
                "fast_peak_mb": round(fast["peak_mb"], 1),
                "plain_peak_mb": round(plain["peak_mb"], 1),
                "memory_ratio": round(plain["peak_mb"] / max(fast["peak_mb"], 1e-6), 1),
            }
            results[f"{setting}_{what}"] = row
            print(
                f"{setting:8} {what:7} {row['fast_s']:8.3f} {row['plain_s']:8.3f} {row['speedup']:8.2f}x "
                f"{row['fast_peak_mb']:8.1f} {row['plain_peak_mb']:9.1f}"
            )
    summary = {"benchmark": "par", "device": args.device, "threads": args.threads, **results}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
