"""DuPL's noise filter: mcc.refine.gmm_noise_filter against scikit-learn's GaussianMixture, image by image.

On random images (labels with background, ignore and 3 classes; per-pixel losses of one mode or of a
low and a high mode; random sizes), it reports the agreement with DuPL's scikit-learn procedure
(identical per-image decisions; the fraction of each image's foreground pixels with the same label)
and the time of both: scikit-learn as DuPL runs it (CPU, image by image) and the batched torch fit.
Needs scikit-learn (the ``dev`` extra). Ends with one JSON line.

    python benchmarks/gmm_filter.py --threads 1                       # 400 images on the CPU
    python benchmarks/gmm_filter.py --device cuda --size 448          # DuPL's crop size, on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "refine"))
from test_gmm import agreement, random_batch, sklearn_filter  # noqa: E402

from mcc.refine import gmm_noise_filter  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=100, help="batches of --batch images (default: 100)")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (default: 4)")
    parser.add_argument("--size", type=int, default=0, help="image side; 0 = random 40-200 (default: 0)")
    parser.add_argument("--device", default="cpu", help="where the torch fit runs (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.RandomState(args.seed)
    device = torch.device(args.device)
    same, images, acted, fractions, sk_s, ours_s = 0, 0, 0, [], 0.0, 0.0
    for _ in range(args.batches):
        height, width = (args.size, args.size) if args.size else (rng.randint(40, 200), rng.randint(40, 200))
        loss, label = random_batch(rng, args.batch, height, width)
        start = time.perf_counter()
        reference, decisions = sklearn_filter(loss, label)
        sk_s += time.perf_counter() - start
        loss_d, label_d = loss.to(device), label.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        ours = gmm_noise_filter(loss_d, label_d)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ours_s += time.perf_counter() - start
        ours = ours.cpu()
        same += sum(bool((ours[i] != label[i]).any()) == d for i, d in enumerate(decisions))
        acted += sum(decisions)
        images += len(decisions)
        fractions += agreement(ours, reference, label)
    summary = {
        "benchmark": "gmm_filter",
        "images": images,
        "filtered_by_sklearn": acted,
        "same_decisions": same,
        "min_pixel_agreement": round(min(fractions), 6),
        "mean_pixel_agreement": round(float(np.mean(fractions)), 6),
        "images_with_any_difference": int(sum(f < 1 for f in fractions)),
        "sklearn_ms_per_image": round(1000 * sk_s / images, 2),
        "torch_ms_per_image": round(1000 * ours_s / images, 2),
        "speedup": round(sk_s / ours_s, 2),
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    print(
        f"{images} images ({acted} filtered by scikit-learn): same decision on {same}; foreground pixels "
        f"agreeing per image: min {min(fractions):.4%}, mean {np.mean(fractions):.4%}; "
        f"scikit-learn {summary['sklearn_ms_per_image']} ms/image, torch ({args.device}) "
        f"{summary['torch_ms_per_image']} ms/image"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
