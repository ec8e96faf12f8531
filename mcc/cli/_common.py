"""Pieces shared by the evaluation and pseudo-label commands: data opening, ids, CRF, options."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import torch

from mcc.data import VOCSegmentation
from mcc.data.layout import DatasetRoot
from mcc.training.outputs import check_split_files, select_ids


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks."""


def add_data_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    """``--data-root``, ``--split``, ``--ids``, ``--ground-truth``, ``--max-images``."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-root", required=True, help="dataset root in VOC layout (docs/data.md)")
    group.add_argument("--split", default=split, help="split list under ImageSets/Segmentation")
    group.add_argument(
        "--ids",
        default=None,
        help="only these images: comma-separated ids, or a text file with one id per line",
    )
    group.add_argument(
        "--ground-truth",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the split has masks; auto: no for a split named 'test', yes otherwise",
    )
    group.add_argument("--max-images", type=int, default=None, help="only the first N images")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--amp``, ``--dist-timeout``."""
    group = parser.add_argument_group("run")
    group.add_argument("--device", default=None, help="cuda or cpu (None: cuda when available)")
    group.add_argument("--amp", action="store_true", help="bf16 autocast of the network (CUDA)")
    group.add_argument(
        "--dist-timeout", type=float, default=1800.0, help="seconds a rank waits in a collective"
    )


def read_ids(text: str) -> list[str]:
    """Ids from ``--ids``: a file with one id per line (first column), or a comma-separated list."""
    path = Path(text)
    if path.is_file():
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def open_split(args: argparse.Namespace) -> VOCSegmentation:
    """The dataset of ``--data-root``/``--split``, every file checked before any work.

    Raises:
        FileNotFoundError: missing root, split list, images or masks (all missing ids named).
        ValueError: ``--ids`` not in the split.
    """
    masks = args.ground_truth == "yes" or (args.ground_truth == "auto" and args.split != "test")
    root = DatasetRoot(args.data_root, args.split, masks=masks, validate=False)
    if args.ids:
        ids = read_ids(args.ids)
        known = set(root.ids)
        unknown = [i for i in ids if i not in known]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(f"--ids: {len(unknown)} id(s) not in split {args.split!r}: {shown}")
        root.ids = ids  # check only what will be read
    check_split_files(root)
    dataset = VOCSegmentation(args.data_root, args.split, masks=masks, validate=False)
    if args.ids:
        dataset = select_ids(dataset, read_ids(args.ids))
    return dataset


def use_net_pixel_stats(dataset, net) -> None:
    """Makes ``dataset`` normalise its images as the network expects (its ``pixel_mean``/``pixel_std``).

    The checkpoint records the statistics of its run (CLIP's for a CLIP or EVA-02 encoder, ImageNet's
    for DeiT and for checkpoints that record none); :func:`~mcc.training.net_from_checkpoint` puts them
    on the network. ``dataset`` is a :class:`~mcc.data.VOCSegmentation`, possibly behind
    :func:`~mcc.training.outputs.select_ids`.
    """
    mean = tuple(net.pixel_mean.flatten().tolist())
    std = tuple(net.pixel_std.flatten().tolist())
    base = dataset
    while not hasattr(base, "mean") and hasattr(base, "dataset"):
        base = base.dataset
    base.mean, base.std = mean, std


def make_crf(device: torch.device):
    """The published dense CRF ``(10, 1, 1, 121, 5, 4)``.

    On CUDA the torch backend on ``device``; on the CPU ``pydensecrf`` (the ``crf`` extra), or the torch
    backend on the CPU when ``pydensecrf`` is not installed.
    """
    from mcc.refine import DenseCRF

    if "backend" not in inspect.signature(DenseCRF).parameters:  # an mcc without the torch backend
        return DenseCRF(10, 1, 1, 121, 5, 4)
    if device.type != "cuda":
        try:
            import pydensecrf.densecrf  # noqa: F401
        except ImportError:
            pass
        else:
            return DenseCRF(10, 1, 1, 121, 5, 4)
    return DenseCRF(10, 1, 1, 121, 5, 4, backend="torch", device=device)


def describe(record_scores: dict, name: str) -> str:
    """``mIoU xx.xx`` of one score of a ``metrics.json`` record."""
    value = record_scores[name]["miou"]
    return "mIoU n/a (no pixels)" if value is None else f"mIoU {value:.2f}"
