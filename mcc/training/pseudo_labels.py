"""Pseudo labels of a whole split from a trained network, as PNG files for a second training stage."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mcc.cam import multi_scale_cam
from mcc.cam.multi_scale import resize_to_patch_multiple
from mcc.network import MCCNet
from mcc.refine import refine_cams_with_background
from mcc.training.evaluation import check_pixel_stats
from mcc.training.metrics import ConfusionMatrix
from mcc.training.outputs import (
    _barrier,
    _percent,
    check_split_files,
    read_label_png,
    save_label_png,
    scores_record,
    write_json,
)

__all__ = ["PSEUDO_LABEL_KINDS", "SettingsMismatchError", "make_pseudo_labels"]

PSEUDO_LABEL_KINDS = ("complete", "train")
SETTINGS_FILE = "settings.json"


class SettingsMismatchError(ValueError):
    """``out_dir`` holds pseudo labels made with other settings (see :func:`make_pseudo_labels`)."""


def _check_same_settings(path: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Refuses to resume into a folder whose labels were made with other settings (unless overwriting)."""
    if overwrite or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable: the labels are checked by nothing else either; rewritten below
    changed = [
        f"{key} {previous.get(key)!r} -> {value!r}"
        for key, value in identity.items()
        if key in previous and previous[key] != value
    ]
    if changed:
        raise SettingsMismatchError(
            f"out_dir {path.parent} holds pseudo labels made with other settings ({'; '.join(changed)}): "
            "use another folder, or overwrite=True (--overwrite) to recompute them all"
        )


def _crf_on_label(
    crf: Callable[[np.ndarray, np.ndarray], Any],
    rgb8: np.ndarray,
    label: torch.Tensor,
    class_ids: torch.Tensor,
    ignore_index: int,
    confidence: float,
) -> torch.Tensor:
    """Dense CRF over a label map: ``confidence`` on each pixel's class, the rest spread evenly.

    Only the image's classes (``class_ids``: background and its labels) take part; ignored pixels start
    uniform over them. Returns the CRF's argmax as class ids, (H, W) on ``label``'s device.
    """
    k = class_ids.numel()
    if k < 2:
        return label
    index = torch.full_like(label, -1)
    for position, class_id in enumerate(class_ids.tolist()):
        index[label == class_id] = position
    probs = torch.full((k, *label.shape), (1 - confidence) / (k - 1), dtype=torch.float32)
    labelled = (index >= 0).cpu()
    onehot = torch.zeros_like(probs).scatter_(0, index.clamp_min(0).cpu()[None], 1.0)
    probs = torch.where(labelled[None], probs + onehot * (confidence - (1 - confidence) / (k - 1)), 1.0 / k)
    refined = crf(rgb8, probs.numpy())
    refined = refined if isinstance(refined, torch.Tensor) else torch.from_numpy(np.asarray(refined))
    return class_ids.to(label.device)[refined.argmax(0).to(label.device)]


@torch.no_grad()
def make_pseudo_labels(
    net: MCCNet,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    kind: str = "complete",
    bkg_thre: float = 0.5,
    fill_ignore: bool = False,
    scales: Sequence[float] | None = None,
    flip: bool = True,
    crf: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    crf_confidence: float = 0.7,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    max_images: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes one pseudo-label PNG per image of ``dataset`` to ``out_dir/<id>.png`` (resumable).

    For each image: :func:`~mcc.multi_scale_cam` of the final classifier at ``scales`` (default the
    network config's) with ``flip``, restricted to the image's labels, then PAR refinement with
    :func:`~mcc.refine_cams_with_background` (docs/method.md sections 2 and 4):

    * ``kind="complete"``: one background level ``bkg_thre`` (low = high): every pixel gets a class, as
      the ``"pseudo"`` score of :func:`~mcc.training.evaluate`.
    * ``kind="train"``: the training step's three-way target (the network's ``low_thre``/``high_thre``):
      background, foreground, and 255 where the two levels disagree (the ``"pseudo_train"`` score).
      With ``fill_ignore`` those pixels take the complete label's class instead.

    With ``crf`` (e.g. :class:`~mcc.DenseCRF` ``(10, 1, 1, 121, 5, 4)``) the label is refined by a
    dense CRF over the image's classes, unary ``crf_confidence`` on each pixel's label (ignored pixels
    start uniform and stay 255 unless ``fill_ignore``).

    Files: palette PNGs (:func:`~mcc.training.save_label_png`, class indices, 255 ignore) written
    atomically, so an interrupted run leaves only whole files; a later call skips the ids already
    written (unless ``overwrite``) and still scores them from the files. Under DDP each rank takes images
    ``rank, rank + world_size, ...``. Rank 0 writes ``out_dir/metrics.json``: ``split``, ``kind``,
    counts (``num_images``, ``written``, ``skipped`` over all ranks), ``settings`` and, where the dataset
    has ground truth, ``scores`` as :func:`~mcc.training.scores_record` (``"pseudo"`` for the complete
    label; ``"pseudo_train"`` scored on its labelled pixels, with ``coverage``; ``"pseudo_train_filled"``
    with ``fill_ignore``). ``out_dir/settings.json`` records what the labels depend on (kind,
    thresholds, scales, flip, CRF, checkpoint); resuming into a folder made with other settings raises
    :class:`SettingsMismatchError` (a ``ValueError``) unless ``overwrite``.

    Args:
        net: the trained network.
        dataset: a :class:`~mcc.data.VOCSegmentation`-like dataset whose samples carry ``cls_label``
            (the image labels; published: VOC ``train_aug``).
        out_dir: folder of the PNGs.
        kind: ``"complete"`` or ``"train"``.
        bkg_thre: background level of the complete label (VOC 0.5, COCO 0.45).
        fill_ignore: fill the ``"train"`` label's ignored pixels with the complete label.
        scales: CAM scales; default ``net.config.cam_scales``.
        flip: add horizontally flipped CAMs.
        crf: callable ``(image uint8 (H, W, 3), probs (K, H, W)) -> probs (K, H, W)``.
        crf_confidence: probability the CRF's unary gives each pixel's label, in (0, 1).
        overwrite: recompute ids whose file exists.
        device: where the network runs.
        rank, world_size: this process's share.
        max_images: only the first N images.
        autocast_dtype: CUDA autocast dtype of the network (e.g. ``torch.bfloat16``).
        progress: a tqdm bar on rank 0; default: when tqdm is installed and stderr is a terminal.
        settings: extra values recorded in ``metrics.json``.

    Returns:
        the ``metrics.json`` record (on every rank).

    Raises:
        ValueError: an unknown ``kind``, a dataset without image labels, bad thresholds, or an
            ``out_dir`` holding labels made with other settings (without ``overwrite``).
        FileNotFoundError: images or masks of the dataset are missing (all named, before any work).
    """
    if kind not in PSEUDO_LABEL_KINDS:
        raise ValueError(f"kind must be one of {PSEUDO_LABEL_KINDS}, got {kind!r}")
    if getattr(dataset, "labels", True) is None:
        raise ValueError("dataset has no image labels (opened without masks): pseudo labels need them")
    if not 0.0 <= bkg_thre <= 1.0:
        raise ValueError(f"bkg_thre must be in [0, 1], got {bkg_thre}")
    if not 0.0 < crf_confidence < 1.0:
        raise ValueError(f"crf_confidence must be in (0, 1), got {crf_confidence}")
    num_classes = getattr(dataset, "num_classes", net.num_classes + 1)
    if num_classes != net.num_classes + 1:
        raise ValueError(
            f"dataset has {num_classes} classes (background included), the network {net.num_classes} + 1"
        )
    check_pixel_stats(net, dataset)
    if hasattr(dataset, "data"):
        check_split_files(dataset)  # every missing file named before any work
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # What the labels depend on: a resumed run must not mix labels made another way into one folder.
    identity = {
        "kind": kind,
        "fill_ignore": fill_ignore,
        "bkg_thre": bkg_thre,
        "low_thre": net.config.low_thre,
        "high_thre": net.config.high_thre,
        "scales": list(scales or net.config.cam_scales),
        "flip": flip,
        "crf": repr(crf) if crf is not None else None,
        "crf_confidence": crf_confidence if crf is not None else None,
        **{k: v for k, v in (settings or {}).items() if k == "checkpoint"},
    }
    _check_same_settings(out_dir / SETTINGS_FILE, identity, overwrite)
    if rank == 0:
        write_json(out_dir / SETTINGS_FILE, identity)
    config = net.config
    ignore = config.ignore_index
    scored = ConfusionMatrix(num_classes, ignore, device="cpu")
    coverage = ConfusionMatrix(2, ignore, device="cpu")
    counts = torch.zeros(2, dtype=torch.int64)  # written, skipped
    has_truth = False

    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices: Any = range(rank, count, world_size)
    if progress is None:
        progress = sys.stderr.isatty()
    if progress and rank == 0:
        try:
            from tqdm import tqdm

            indices = tqdm(indices, desc=f"pseudo labels ({kind})", leave=False)
        except ImportError:
            pass

    patch = net.encoder.patch_size
    use_autocast = autocast_dtype is not None and device.type == "cuda"
    if use_autocast and autocast_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        autocast_dtype = torch.float16  # a GPU before Ampere: bf16 autocast would raise

    def cam_fn(images: torch.Tensor):
        return net.cams(resize_to_patch_multiple(images, patch))

    def refine(image: torch.Tensor, cam: torch.Tensor, cls_label: torch.Tensor, low: float, high: float):
        return refine_cams_with_background(
            net.par,
            net.denormalize(image),
            cam,
            cls_label,
            high_thre=high,
            low_thre=low,
            ignore_index=ignore,
            down_scale=config.par_down_scale,
        )[0]

    was_training = net.training
    net.eval()
    try:
        for index in indices:
            sample = dataset[index]
            path = out_dir / f"{sample['id']}.png"
            if path.is_file() and not overwrite:
                label = torch.from_numpy(read_label_png(path).astype(np.int64))
                counts[1] += 1
            else:
                image = sample["image"].unsqueeze(0).to(device)
                cls_label = sample["cls_label"].unsqueeze(0).to(device)
                with torch.autocast(
                    device.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast
                ):
                    cam, _ = multi_scale_cam(cam_fn, image, scales or config.cam_scales, flip)
                cam = cam.float()
                complete = refine(image, cam, cls_label, bkg_thre, bkg_thre)
                label = complete if kind == "complete" else refine(image, cam, cls_label, *_levels(config))
                if crf is not None:
                    rgb8 = (net.denormalize(image)[0].permute(1, 2, 0) * 255).round().byte().cpu().numpy()
                    class_ids = torch.cat([cls_label.new_ones(1), cls_label[0]]).nonzero()[:, 0]
                    unsure = label == ignore
                    label = _crf_on_label(
                        crf, np.ascontiguousarray(rgb8), label, class_ids, ignore, crf_confidence
                    )
                    label = label.masked_fill(unsure, ignore)
                if fill_ignore:
                    label = torch.where(label == ignore, complete, label)
                label = label.cpu()
                save_label_png(path, label)
                counts[0] += 1
            if "mask" in sample:
                has_truth = True
                mask = sample["mask"]
                labelled = label != ignore
                scored.update(label.masked_fill(~labelled, 0), mask.masked_fill(~labelled, ignore))
                coverage.update(labelled.long(), torch.where(mask != ignore, 1, ignore))
    finally:
        net.train(was_training)

    flag = torch.tensor([int(has_truth)])
    if _distributed():
        import torch.distributed as dist

        backend_device = (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        )
        for tensor in (scored.matrix, coverage.matrix, counts, flag):
            moved = tensor.to(backend_device) if backend_device is not None else tensor
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved.cpu())
    record: dict[str, Any] = {
        "split": getattr(getattr(dataset, "data", None), "split", None),
        "kind": kind,
        "fill_ignore": fill_ignore,
        "num_images": count,
        "written": int(counts[0]),
        "skipped": int(counts[1]),
        "settings": {
            "bkg_thre": bkg_thre,
            "low_thre": config.low_thre,
            "high_thre": config.high_thre,
            "scales": list(scales or config.cam_scales),
            "flip": flip,
            "crf": repr(crf) if crf is not None else None,
            **(settings or {}),
        },
    }
    if int(flag) > 0:
        name = "pseudo" if kind == "complete" else "pseudo_train_filled" if fill_ignore else "pseudo_train"
        scores = {name: scored.compute()}
        if name == "pseudo_train":
            scores["pseudo_train_coverage"] = coverage.compute()
        record["scores"] = scores_record(scores, dataset.class_names)
        record["coverage"] = _percent(coverage.compute().pixel_accuracy)
    _barrier()
    if rank == 0:
        write_json(out_dir / "metrics.json", record)
    return record


def _levels(config) -> tuple[float, float]:
    return config.low_thre, config.high_thre


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
