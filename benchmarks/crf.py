"""Dense CRF, seconds per image: pydensecrf2 (C++, CPU) vs the torch backend (CPU, and CUDA if present).

One generated VOC-size scene (375x500, 21 classes, the scene of ``tests/refine/test_dense_crf.py``; ``--scene
coco``: 427x640, 81 classes) with
the published evaluation parameters ``DenseCRF(10, 1, 1, 121, 5, 4)``. Each row is the median over
``--repeats`` calls after one warm-up, in its own process (see ``common.py``), and covers everything a
call does: unary, both lattices (or pydensecrf's; the torch backend's spatial lattice depends only on the
image size and is built once per size, as in an evaluation), 10 mean-field iterations, the copy back;
wall time and this process's CPU time (the fairer number on a shared CPU; on CUDA it only counts the host
side). The torch backend also runs batches of ``--batch`` images through ``DenseCRF.inference`` (time per
image), on the CPU and on CUDA. Prints a table with each row's speed-up over pydensecrf2, then one JSON
line with ``crf_cpu_speedup`` (pydensecrf2 CPU s / torch CPU s, one image), ``crf_label_agreement`` and,
with the extension, ``filter_cpu_speedup`` (rloss CPU s / ``bilateral_filter`` CPU s); on CUDA also
``crf_cuda_speedup_batch{B}`` (pydensecrf2 wall s / CUDA wall s per image).

    python benchmarks/crf.py --threads 1                    # CPU rows (and CUDA rows when available)
    python benchmarks/crf.py --threads 1 --device cuda      # also the CUDA rows; exits 2 without CUDA

With ``--rloss-extension DIR`` (a folder holding the compiled ``bilateralfilter`` module of rloss, see
``tests/refine/make_bilateral_reference.py``) it also times :func:`mcc.refine.bilateral_filter` against
that extension on the regularised loss's input: batch 4, 21 channels, 224x224 (a 448 crop at scale 0.5),
sigma_rgb 15, sigma_xy 50 (the extension's OpenMP threads are set to ``--threads`` too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from common import HelpFormatter, environment, measure, run_child

from mcc.refine import DenseCRF, bilateral_filter

# The scene generator lives with the tests, which check the two backends against each other on it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "refine"))
from test_dense_crf import voc_like_scene  # noqa: E402

# Scene sizes: (height, width, classes).
SCENES = {"voc": (375, 500, 21), "coco": (427, 640, 81)}


def child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.backend == "torch-cuda" else "cpu")
    count = max(1, args.batch if args.batched else 1)
    scenes = [voc_like_scene(seed, *SCENES[args.scene]) for seed in range(count)]
    if args.backend == "pydensecrf":
        crf = DenseCRF(10, 1, 1, 121, 5, 4)
    else:
        crf = DenseCRF(10, 1, 1, 121, 5, 4, backend="torch", device=device)
    if args.batched:
        images = torch.from_numpy(np.stack([image for image, _ in scenes])).permute(0, 3, 1, 2).to(device)
        probs = torch.from_numpy(np.stack([p for _, p in scenes])).to(device)

        def step():
            crf.inference(images, probs).cpu()
    else:
        image, probs = scenes[0]

        def step():
            crf(image, probs)

    cpu_times = []

    def timed_step():
        start = time.process_time()
        step()
        cpu_times.append(time.process_time() - start)

    result = measure(timed_step, device, warmup=1, repeats=args.repeats)
    result["images"] = len(scenes) if args.batched else 1
    # CPU time of this process: on a shared machine, wall time also counts waiting for a core.
    result["cpu_s"] = statistics.median(cpu_times[1:])
    return result


def bilateral_child(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 224, 224, generator=generator) * 255, 5, 1, 2)
    values = torch.softmax(torch.randn(4, 21, 224, 224, generator=generator), dim=1)
    device = torch.device("cuda" if args.backend == "torch-cuda" else "cpu")
    if args.backend == "rloss":
        sys.path.insert(0, args.rloss_extension)
        import bilateralfilter

        flat_image, flat_values = image.numpy().ravel(), values.numpy().ravel()
        out = np.zeros_like(flat_values)

        def step():
            bilateralfilter.bilateralfilter_batch(flat_image, flat_values, out, 4, 21, 224, 224, 15.0, 50.0)
    else:
        image, values = image.to(device), values.to(device)

        def step():
            bilateral_filter(image, values, 15.0, 50.0)

    start = time.process_time()
    result = measure(step, device, warmup=1, repeats=args.repeats)
    result["cpu_s"] = (time.process_time() - start) / (args.repeats + 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CPU here is shared)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--batch", type=int, default=8, help="images per batched CUDA call")
    parser.add_argument("--cpu-batch", type=int, default=4, help="images per batched CPU call")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="cpu: CPU rows only; cuda: also the CUDA rows (required); auto: CUDA rows when available",
    )
    parser.add_argument(
        "--scene",
        choices=sorted(SCENES),
        default="voc",
        help="the CRF's scene: voc (375x500, 21 classes) or coco (427x640, 81 classes)",
    )
    parser.add_argument("--rloss-extension", help="folder of the compiled rloss bilateralfilter module")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bilateral", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--backend", choices=("pydensecrf", "torch-cpu", "torch-cuda", "rloss"), help=argparse.SUPPRESS
    )
    parser.add_argument("--batched", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(bilateral_child(args) if args.bilateral else child(args)))
        return

    if args.device == "cuda" and not torch.cuda.is_available():
        print("crf.py: --device cuda: CUDA is not available on this machine", file=sys.stderr)
        sys.exit(2)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the rloss extension's threads, in the children
    torch.set_num_threads(args.threads)
    print(f"# {environment()}")
    # Agreement of the two backends on the benchmark's scene (the slow test checks the same figures).
    image, probs = voc_like_scene(0, *SCENES[args.scene])
    expected = DenseCRF(10, 1, 1, 121, 5, 4)(image, probs)
    marginals = DenseCRF(10, 1, 1, 121, 5, 4, backend="torch", device="cpu")(image, probs)
    difference = np.abs(marginals - expected)
    agreement = {
        "same_label": float((marginals.argmax(0) == expected.argmax(0)).mean()),
        "max_abs_marginal_diff": float(difference.max()),
        "mean_abs_marginal_diff": float(difference.mean()),
        "crf_changed_labels": float((expected.argmax(0) != probs.argmax(0)).mean()),
    }
    print(
        f"# torch (CPU) vs pydensecrf2: same label on {100 * agreement['same_label']:.3f} % of the pixels, "
        f"marginals max |diff| {agreement['max_abs_marginal_diff']:.2e}, "
        f"mean {agreement['mean_abs_marginal_diff']:.2e} "
        f"(the CRF changes {100 * agreement['crf_changed_labels']:.1f} % of the unary labels)"
    )
    runs = [("pydensecrf", False), ("torch-cpu", False), ("torch-cpu", True)]
    if cuda:
        runs += [("torch-cuda", False), ("torch-cuda", True)]
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats), "--scene", args.scene]
    header = ("backend", "batch", "s/image", "vs pydensecrf", "CPU s/image", "vs pydensecrf", "peak MB")
    print("{:12} {:>6} {:>10} {:>14} {:>12} {:>14} {:>9}".format(*header))
    results = {}
    baseline = None
    for backend, batched in runs:
        batch = args.batch if backend == "torch-cuda" else args.cpu_batch
        extra = ["--batch", str(batch), *(["--batched"] if batched else [])]
        run = run_child(__file__, [*common, "--backend", backend, *extra])
        per_image = run["median_s"] / run["images"]
        cpu_per_image = run["cpu_s"] / run["images"]
        baseline = (per_image, cpu_per_image) if baseline is None else baseline
        name = f"{backend}-batch{run['images']}" if batched else backend
        results[name] = {
            "s_per_image": round(per_image, 4),
            "speedup_vs_pydensecrf": round(baseline[0] / per_image, 2),
            "cpu_s_per_image": round(cpu_per_image, 4),
            "cpu_speedup_vs_pydensecrf": round(baseline[1] / cpu_per_image, 2),
            "peak_mb": round(run["peak_mb"], 1),
        }
        row = results[name]
        print(
            f"{backend:12} {run['images']:6d} "
            f"{row['s_per_image']:10.3f} {row['speedup_vs_pydensecrf']:13.2f}x "
            f"{row['cpu_s_per_image']:12.3f} {row['cpu_speedup_vs_pydensecrf']:13.2f}x {row['peak_mb']:9.1f}"
        )
    if args.rloss_extension:
        print("# bilateral_filter, batch 4 x 21 channels x 224x224 (rloss input), s per call")
        print("{:12} {:>10} {:>9} {:>12} {:>9}".format("filter", "s", "vs rloss", "CPU s", "vs rloss"))
        filters = ["rloss", "torch-cpu"] + (["torch-cuda"] if cuda else [])
        reference = None
        extension = ["--rloss-extension", os.path.abspath(args.rloss_extension)]
        for backend in filters:
            run = run_child(__file__, [*common, *extension, "--bilateral", "--backend", backend])
            reference = (run["median_s"], run["cpu_s"]) if reference is None else reference
            row = {
                "s": round(run["median_s"], 4),
                "speedup_vs_rloss": round(reference[0] / run["median_s"], 2),
                "cpu_s": round(run["cpu_s"], 4),
                "cpu_speedup_vs_rloss": round(reference[1] / run["cpu_s"], 2),
            }
            results[f"bilateral-{backend}"] = row
            print(
                f"{backend:12} {row['s']:10.3f} {row['speedup_vs_rloss']:8.2f}x "
                f"{row['cpu_s']:12.3f} {row['cpu_speedup_vs_rloss']:8.2f}x"
            )
    summary = {
        "benchmark": "crf",
        "threads": args.threads,
        "scene": args.scene,
        "crf_cpu_speedup": results["torch-cpu"]["cpu_speedup_vs_pydensecrf"],
        "crf_cpu_speedup_batch": results[f"torch-cpu-batch{args.cpu_batch}"]["cpu_speedup_vs_pydensecrf"],
        "crf_label_agreement": agreement["same_label"],
    }
    if "bilateral-torch-cpu" in results:
        summary["filter_cpu_speedup"] = results["bilateral-torch-cpu"]["cpu_speedup_vs_rloss"]
    for name, row in results.items():
        if name.startswith("torch-cuda"):
            batch = name.split("-batch")[1] if "-batch" in name else "1"
            summary[f"crf_cuda_speedup_batch{batch}"] = row["speedup_vs_pydensecrf"]
    print(json.dumps({**summary, "agreement": agreement, **results}))


if __name__ == "__main__":
    main()
