"""Scoring a trained :class:`~mcc.MCCNet` on a labelled split: CAMs, pseudo labels, segmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mcc.cam import cam_to_label, multi_scale_cam
from mcc.cam.multi_scale import resize_to_patch_multiple
from mcc.network import MCCNet
from mcc.refine import refine_cams_with_background
from mcc.training.metrics import ConfusionMatrix, SegmentationScores

__all__ = ["evaluate"]


def check_pixel_stats(net: MCCNet, dataset: Dataset, name: str = "dataset") -> None:
    """Refuses a dataset that normalises its images with other statistics than the network expects.

    The dataset's ``mean``/``std`` (of :class:`~mcc.data.VOCSegmentation` / :class:`~mcc.data.VOCTrainViews`,
    also behind a subset's ``dataset``) must equal the network's ``pixel_mean``/``pixel_std``: a CLIP or
    EVA-02 encoder fed ImageNet-normalised images, or PAR given wrongly denormalised colours, would give
    silently worse results. Datasets without these attributes, or returning unnormalised images, pass.

    Raises:
        ValueError: the statistics differ (the message gives both and names ``name``).
    """
    base = dataset
    while not hasattr(base, "mean") and hasattr(base, "dataset"):
        base = base.dataset
    mean, std = getattr(base, "mean", None), getattr(base, "std", None)
    if mean is None or std is None or not getattr(base, "normalize_images", True):
        return
    expected_mean = net.pixel_mean.detach().flatten().cpu().double()
    expected_std = net.pixel_std.detach().flatten().cpu().double()
    given_mean = torch.tensor(mean, dtype=torch.float64).flatten()
    given_std = torch.tensor(std, dtype=torch.float64).flatten()
    same_mean = torch.allclose(given_mean, expected_mean, atol=1e-6)
    if not (same_mean and torch.allclose(given_std, expected_std, atol=1e-6)):
        raise ValueError(
            f"{name} normalises images with mean {tuple(mean)}, std {tuple(std)}, but the network expects "
            f"pixel_mean {tuple(round(v, 6) for v in expected_mean.tolist())}, pixel_std "
            f"{tuple(round(v, 6) for v in expected_std.tolist())}: give the dataset and MCCNet the same "
            "statistics (the backbone's, vit.pretrained_cfg['mean'/'std']; docs/backbones.md)"
        )


def _segment(
    net: MCCNet,
    image: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
    crf: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> torch.Tensor:
    """(1, H, W) class indices of :meth:`MCCNet.segment`, after ``crf`` on the softmax when given: the
    masks of :func:`~mcc.training.predict.segment_images`, which ``mcc-predict`` writes too."""
    from mcc.training.predict import segment_images

    return segment_images(net, image, scales, flip, crf)


@torch.no_grad()
def evaluate(
    net: MCCNet,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    cams: bool = True,
    pseudo_labels: bool = False,
    segmentation: bool = True,
    bkg_thre: float | Sequence[float] = 0.5,
    cam_scales: Sequence[float] | None = None,
    seg_scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    max_images: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = False,
    on_image: Callable[[int, dict, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, SegmentationScores]:
    """mIoU of the CAM labels, the refined pseudo labels and the segmentation on a labelled split.

    Every image is scored at its own size (docs/method.md section 4). Inputs whose sides are not multiples of
    the patch size are resized to the nearest multiple for the network; maps and logits are resized back.

    * ``"cam"``: :func:`~mcc.multi_scale_cam` of the final classifier with the ground-truth image labels
      (as in WSSS practice), :func:`~mcc.cam_to_label` with ``bkg_thre`` (VOC 0.5,
      COCO 0.45; docs/method.md section 4).
      With several thresholds, ``"cam"`` is the first and ``"cam@0.40"``... every one of them.
    * ``"pseudo"``: :func:`~mcc.refine_cams_with_background` (PAR) of the same CAMs with one background
      level, the first ``bkg_thre`` (``low_thre = high_thre``): a complete label, comparable with ``"cam"``.
    * ``"pseudo_train"``: the training step's segmentation target (the network's ``low_thre`` and
      ``high_thre``; PAR-refined, or the thresholded CAM when ``config.seg_target == "cam"``), scored on the
      pixels it labels; ``"pseudo_train_coverage"``: its ``pixel_accuracy``
      is the fraction of (non-ignored) pixels that target labels.
    * ``"seg"``: :meth:`~mcc.MCCNet.segment` with ``seg_scales`` and ``flip``, then optionally ``crf``
      (e.g. :class:`~mcc.DenseCRF` ``(10, 1, 1, 121, 5, 4)``) on the softmax.

    Under DDP each rank scores images ``rank, rank + world_size, ...`` and the counts are all-reduced,
    so every rank returns the same scores.

    Args:
        net: the network (put in eval mode for the call, its mode restored after).
        dataset: a :class:`~mcc.data.VOCSegmentation`-like dataset: samples with ``image`` (3, H, W)
            normalised as ``net`` expects, ``mask`` (H, W) long with 255 = ignore, ``cls_label`` (C,),
            and ``num_classes`` (background included).
        device: where the network runs.
        cams, pseudo_labels, segmentation: which scores to compute.
        bkg_thre: background threshold(s) of the CAM labels.
        cam_scales: CAM scales (default the network config's).
        seg_scales: segmentation scales (VOC evaluation: 1.0, 1.25, 1.5).
        flip: add horizontal flips to the segmentation.
        crf: callable ``(image uint8 (H, W, 3), probs (C, H, W)) -> probs (C, H, W)``.
        max_images: score only the first ``max_images`` images.
        rank, world_size: this process's share of the images.
        autocast_dtype: run the network under CUDA autocast with this dtype (e.g. ``torch.bfloat16``; a
            GPU without bf16 gets float16).
        num_workers: DataLoader workers that read and decode the images while the network runs.
        progress: show a tqdm bar on rank 0 (when tqdm is installed).
        on_image: called after every image of this rank as ``on_image(index, sample, outputs)`` with
            the dataset index, the sample and the maps computed for it, each for the whole image at its
            own size, on ``device``: ``"cam"`` (C, H, W) float CAMs, ``"cam_label"`` (H, W) the CAM label
            at the first ``bkg_thre``, ``"pseudo"`` and ``"pseudo_train"`` (H, W), ``"seg"`` (H, W) the
            segmentation (class indices, after the CRF when given). :func:`~mcc.training.evaluate_to_dir`
            writes files with it.

    A dataset without ground truth (e.g. :class:`~mcc.data.VOCSegmentation` with ``masks=False``, VOC
    ``test``) can only be segmented: pass ``cams=False, pseudo_labels=False``; nothing is scored, the
    result is empty and ``on_image`` receives the predictions.

    Returns:
        dict of :class:`~mcc.training.SegmentationScores` with the keys above.

    Raises:
        ValueError: no threshold, a class count that differs from the network's, or CAM / pseudo-label
            scores asked of a dataset without ground truth.
    """
    thresholds = [bkg_thre] if isinstance(bkg_thre, int | float) else list(bkg_thre)
    if not thresholds:
        raise ValueError("bkg_thre: give at least one threshold")
    num_classes = getattr(dataset, "num_classes", net.num_classes + 1)
    if num_classes != net.num_classes + 1:
        raise ValueError(
            f"dataset has {num_classes} classes (background included), the network {net.num_classes} + 1"
        )
    check_pixel_stats(net, dataset)
    has_truth = getattr(dataset, "labels", True) is not None
    if not has_truth and (cams or pseudo_labels):
        raise ValueError(
            "dataset has no ground truth (no masks, no image labels): CAMs and pseudo labels need the image "
            "labels; pass cams=False and pseudo_labels=False to segment only"
        )
    device = torch.device(device)
    config = net.config
    matrices: dict[str, ConfusionMatrix] = {}
    coverage = ConfusionMatrix(2, config.ignore_index, device=device)  # labelled (1) or not (0)

    def score(name: str, prediction: torch.Tensor, target: torch.Tensor) -> None:
        if name not in matrices:
            matrices[name] = ConfusionMatrix(num_classes, config.ignore_index, device=device)
        matrices[name].update(prediction, target)

    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = range(rank, count, world_size)
    # one image at a time (each at its own size), read by the workers ahead of the network
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    samples = zip(indices, loader)
    if progress and rank == 0:
        try:
            from tqdm import tqdm

            samples = tqdm(samples, total=len(indices), desc="evaluate", leave=False)
        except ImportError:
            pass

    patch = net.encoder.patch_size
    use_autocast = autocast_dtype is not None and device.type == "cuda"
    if use_autocast and autocast_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        autocast_dtype = torch.float16  # a GPU before Ampere: bf16 autocast would raise

    def cam_fn(images: torch.Tensor):
        return net.cams(resize_to_patch_multiple(images, patch))

    was_training = net.training
    net.eval()
    try:
        for index, sample in samples:
            image = sample["image"].unsqueeze(0).to(device, non_blocking=True)
            outputs: dict[str, torch.Tensor] = {}
            if "mask" not in sample:  # no ground truth: segmentation only, nothing scored
                if segmentation:
                    with torch.autocast(
                        device.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast
                    ):
                        outputs["seg"] = _segment(net, image, seg_scales, flip, crf)[0]
                if on_image is not None:
                    on_image(index, sample, outputs)
                continue
            mask = sample["mask"].unsqueeze(0).to(device, non_blocking=True)
            cls_label = sample["cls_label"].unsqueeze(0)  # stays on the host: classes read without a sync
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast):
                if cams or pseudo_labels:
                    cam, _ = multi_scale_cam(cam_fn, image, cam_scales or config.cam_scales, True)
                    cam = cam.float()
                    outputs["cam"] = cam[0]
                    if cams:
                        for i, thre in enumerate(thresholds):
                            label = cam_to_label(
                                cam, cls_label, bkg_thre=thre, ignore_index=config.ignore_index
                            )
                            if i == 0:
                                score("cam", label, mask)
                                outputs["cam_label"] = label[0]
                            if len(thresholds) > 1:
                                score(f"cam@{thre:.2f}", label, mask)
                    if pseudo_labels:
                        rgb = net.denormalize(image)
                        # One background level (a complete label, comparable with the CAM label) and the
                        # training target's two levels (scored where it commits, and how much it covers).
                        levels = {
                            "pseudo": (thresholds[0],) * 2,
                            "train": (config.low_thre, config.high_thre),
                        }
                        refined = {
                            key: refine_cams_with_background(
                                net.par,
                                rgb,
                                cam,
                                cls_label,
                                high_thre=high,
                                low_thre=low,
                                ignore_index=config.ignore_index,
                                down_scale=config.par_down_scale,
                            )
                            for key, (low, high) in levels.items()
                        }
                        score("pseudo", refined["pseudo"], mask)
                        target = refined["train"]
                        if config.seg_target == "cam":  # the no-PAR knock-out trains on the CAM label
                            target = cam_to_label(
                                cam,
                                cls_label,
                                low_thre=config.low_thre,
                                high_thre=config.high_thre,
                                ignore_index=config.ignore_index,
                            )
                        outputs["pseudo"], outputs["pseudo_train"] = refined["pseudo"][0], target[0]
                        labelled = target != config.ignore_index
                        score("pseudo_train", target, mask.masked_fill(~labelled, config.ignore_index))
                        valid = mask != config.ignore_index
                        coverage_target = torch.where(valid, 1, config.ignore_index)
                        coverage.update(labelled.long(), coverage_target)
                if segmentation:
                    prediction = _segment(net, image, seg_scales, flip, crf)
                    score("seg", prediction, mask)
                    outputs["seg"] = prediction[0]
            if on_image is not None:
                on_image(index, sample, outputs)
    finally:
        net.train(was_training)

    names = []
    if cams:
        names += ["cam"] + ([f"cam@{t:.2f}" for t in thresholds] if len(thresholds) > 1 else [])
    if pseudo_labels:
        names += ["pseudo", "pseudo_train"]
    if segmentation:
        names.append("seg")
    results = {}
    if not has_truth:
        return results
    for name in names:  # fixed order: every rank joins the same collectives even with no images
        matrix = matrices.get(name) or ConfusionMatrix(num_classes, config.ignore_index, device=device)
        matrix.all_reduce()
        results[name] = matrix.compute()
    if pseudo_labels:
        coverage.all_reduce()
        results["pseudo_train_coverage"] = coverage.compute()
    return results
