"""Confusion-matrix mIoU (docs/method.md section 4), accumulable over batches and across DDP ranks."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

__all__ = ["ConfusionMatrix", "SegmentationScores", "segmentation_scores"]


class SegmentationScores(NamedTuple):
    """Scores of a confusion matrix.

    Attributes:
        miou: mean IoU over the classes, in [0, 1] (classes with no ground truth and no prediction are
            left out of the mean, see :func:`segmentation_scores`).
        iou: IoU per class, shape (C,), float64; NaN for a class absent from both.
        pixel_accuracy: correctly labelled fraction of the scored pixels.
    """

    miou: float
    iou: torch.Tensor
    pixel_accuracy: float


def segmentation_scores(confusion: torch.Tensor) -> SegmentationScores:
    """IoU per class and their mean from a confusion matrix.

    ``IoU_c = M[c, c] / (sum_j M[c, j] + sum_i M[i, c] - M[c, c])`` with rows = ground truth and
    columns = prediction. A class with neither ground truth nor prediction has no defined IoU (0 / 0):
    it gets NaN and is left out of the mean (on VOC/COCO validation every class occurs, so this is the
    usual mean over all classes).

    Args:
        confusion: (C, C) counts, rows = ground truth, columns = prediction.

    Returns:
        :class:`SegmentationScores`.

    Example:
        >>> m = torch.tensor([[3, 1], [0, 4]])
        >>> segmentation_scores(m).iou.tolist()     # 3 / (4 + 3 - 3), 4 / (4 + 5 - 4)
        [0.75, 0.8]
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must have shape (C, C), got {tuple(confusion.shape)}")
    confusion = confusion.double()
    diag = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - diag
    iou = torch.where(union > 0, diag / union.clamp_min(1), torch.full_like(diag, float("nan")))
    total = confusion.sum()
    miou = float(iou.nanmean()) if bool((union > 0).any()) else float("nan")
    accuracy = float(diag.sum() / total) if total > 0 else float("nan")
    return SegmentationScores(miou, iou, accuracy)


class ConfusionMatrix:
    """Pixel confusion matrix over C classes; ground truth ``ignore_index`` is not counted.

    Args:
        num_classes: C, background included (VOC 21).
        ignore_index: ground-truth value of pixels that are not scored (VOC: 255).
        device: where the counts live (int64).

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 255]]))
        >>> cm.compute().miou
        1.0
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # C*C cells, then three bins: ignored pixels, bad targets, bad predictions (see update)
        self._counts = torch.zeros(num_classes * num_classes + 3, dtype=torch.int64, device=device)
        self.matrix = self._counts[: num_classes * num_classes].view(num_classes, num_classes)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: one scatter of every pixel into its cell, with no host sync on an accelerator.

        Values out of range on scored pixels are counted apart and raise ``ValueError``: at once for
        counts on the CPU, at the next :meth:`compute` (or :meth:`all_reduce`) for counts on an accelerator,
        where checking every update would wait for the device.

        Args:
            prediction: class indices, any integer shape, e.g. (B, H, W); values in [0, C).
            target: ground truth of the same shape; values in [0, C) or ``ignore_index``.
        """
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
                f"and {tuple(target.shape)}"
            )
        if prediction.is_floating_point() or target.is_floating_point():
            raise ValueError("prediction and target must hold integer class indices, got floats")
        target = target.to(self.matrix.device).reshape(-1).long()
        prediction = prediction.to(self.matrix.device).reshape(-1).long()
        c = self.num_classes
        valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= c))
        bad_prediction = valid & ~bad_target & ((prediction < 0) | (prediction >= c))
        if self._counts.device.type == "cpu":  # free to check here: refuse the batch, counts unchanged
            self._check(bool(bad_target.any()), bool(bad_prediction.any()))
        cell = torch.where(valid, target * c + prediction, c * c)
        cell = torch.where(bad_target, c * c + 1, torch.where(bad_prediction, c * c + 2, cell))
        self._counts.scatter_add_(0, cell, torch.ones_like(cell))

    def _check(self, bad_target: bool | None = None, bad_prediction: bool | None = None) -> None:
        c = self.num_classes
        if bad_target is None:
            bad_target, bad_prediction = self._counts[c * c + 1 :].tolist()
        if bad_target:
            raise ValueError(f"target has values outside [0, {c}) besides ignore_index {self.ignore_index}")
        if bad_prediction:
            raise ValueError(f"prediction has values outside [0, {c}) on scored pixels")

    def all_reduce(self) -> None:
        """Sums the counts over the ranks of the default process group (no-op when not distributed)."""
        self._check()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self._counts, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self._counts.zero_()

    def compute(self) -> SegmentationScores:
        """Scores of the counts so far (see :func:`segmentation_scores`)."""
        self._check()
        return segmentation_scores(self.matrix.cpu())
