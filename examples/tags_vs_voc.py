"""Train from tags alone, predict new images, score them; and the same data trained through the VOC layout.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python examples/tags_vs_voc.py --work-dir runs/tags_vs_voc

1. writes the synthetic VOC (``mcc.data.make_synthetic_voc``), then a plain folder ``photos/`` with copies
   of its training images (no mask anywhere), their tags as ``tags.csv`` and ``classes.txt``, and a
   folder ``new_photos/`` with copies of the validation images (never seen in training);
2. ``mcc-train --images photos --labels tags.csv --classes classes.txt`` and ``mcc-train-voc`` on the
   synthetic root, with the same settings and seed (a small ViT from scratch, the demo's sizes);
3. ``mcc-predict`` of each checkpoint on ``new_photos/``; scores the masks against the validation masks
   (mIoU over background + 5 classes), next to the all-background labelling;
4. prints one JSON line: both mIoUs, the baseline, and whether the two runs' weights are identical.

The tags are the image labels of the masks, so both runs see the same labels: they should agree.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import torch

from mcc.cli import predict as predict_cli
from mcc.cli import train as train_cli
from mcc.cli._common import ArgumentParser, HelpFormatter
from mcc.data import VOCSegmentation, make_synthetic_voc
from mcc.training import ConfusionMatrix, load_checkpoint, read_label_png

MODEL = [
    "--model", "vit_tiny_patch16_224", "--pretrained", "false",
    "--vit", "patch_size=8", "--vit", "embed_dim=96", "--vit", "depth=4", "--vit", "num_heads=4",
]  # fmt: skip


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="tags_vs_voc.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--work-dir", default="runs/tags_vs_voc", help="data, runs and predictions")
    parser.add_argument("--num-train", type=int, default=400, help="synthetic training images")
    parser.add_argument("--num-val", type=int, default=50, help="held-out images to predict and score")
    parser.add_argument("--size", type=int, default=64, help="image side and crop size, pixels")
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step")
    parser.add_argument("--lr", type=float, default=6e-4, help="encoder learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of both runs")
    return parser


def score(pred_dir: Path, dataset: VOCSegmentation) -> tuple[float, float]:
    """(mIoU of the predicted PNGs, mIoU of all background) in percent against the dataset's masks."""
    predicted = ConfusionMatrix(dataset.num_classes, 255)
    background = ConfusionMatrix(dataset.num_classes, 255)
    for index, image_id in enumerate(dataset.ids):
        mask = dataset[index]["mask"]
        prediction = torch.from_numpy(read_label_png(pred_dir / f"{image_id}.png").astype("int64"))
        predicted.update(prediction, mask)
        background.update(torch.zeros_like(mask), mask)
    return 100 * predicted.compute().miou, 100 * background.compute().miou


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir)
    if work.exists():
        shutil.rmtree(work)
    root = make_synthetic_voc(work / "synthetic", args.num_train, args.num_val, args.size, args.seed)
    train_set = VOCSegmentation(root, "train")
    names = train_set.class_names[1:]
    (work / "photos").mkdir()
    (work / "new_photos").mkdir()
    with (work / "tags.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "labels"])
        for image_id, label in zip(train_set.ids, train_set.labels):
            shutil.copy(root / "JPEGImages" / f"{image_id}.jpg", work / "photos" / f"{image_id}.jpg")
            writer.writerow([f"{image_id}.jpg", ";".join(n for n, on in zip(names, label) if on)])
    (work / "classes.txt").write_text("\n".join(names) + "\n")
    val_set = VOCSegmentation(root, "val")
    for image_id in val_set.ids:
        shutil.copy(root / "JPEGImages" / f"{image_id}.jpg", work / "new_photos" / f"{image_id}.jpg")

    common = [
        *MODEL,
        "--crop-size", str(args.size), "--batch-size", str(args.batch_size), "--max-iters", str(args.steps),
        "--schedule", "scaled", "--lr", str(args.lr), "--seed", str(args.seed), "--data-seed", str(args.seed),
        "--num-workers", "0", "--device", "cpu", "--save-every", "0", "--log-every", "100",
        "--mcc", f"seg_start_step={args.steps // 2}",
        "--mcc", f"final_cam_positives_from={int(0.6 * args.steps)}",
        "--mcc", "mask_scale=2", "--mcc", "projector_dim=256", "--mcc", "projector_hidden_dim=256",
        "--mcc", "projector_bottleneck_dim=64", "--mcc", "decoder_dim=128", "--mcc", "decoder_dilation=2",
    ]  # fmt: skip
    results: dict = {"steps": args.steps, "num_train": args.num_train, "num_val": args.num_val}
    runs = {
        "tags": (
            train_cli.main_tags,
            ["--images", str(work / "photos"), "--labels", str(work / "tags.csv"),
             "--classes", str(work / "classes.txt")],
        ),
        "voc": (train_cli.main_voc, ["--data-root", str(root), "--train-split", "train", "--val-split", ""]),
    }  # fmt: skip
    for name, (entry, data) in runs.items():
        tic = time.perf_counter()
        entry([*data, *common, "--work-dir", str(work / f"run_{name}")])
        results[f"{name}_train_s"] = round(time.perf_counter() - tic, 1)
        predict_cli.main(
            [
                "--checkpoint", str(work / f"run_{name}" / "last.pt"),
                "--out-dir", str(work / f"pred_{name}"),
                "--device", "cpu", str(work / "new_photos"),
            ]
        )  # fmt: skip
        miou, baseline = score(work / f"pred_{name}", val_set)
        results[f"{name}_seg_miou"] = round(miou, 2)
        results["all_background_miou"] = round(baseline, 2)
    weights = [load_checkpoint(work / f"run_{name}" / "last.pt")["model"] for name in runs]
    results["max_weight_difference"] = max(
        (weights[0][key].double() - weights[1][key].double()).abs().max().item() for key in weights[0]
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
