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
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch.

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
        valid = target != self.ignore_index
        target, prediction = target[valid], prediction[valid]
        c = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= c):
            raise ValueError(f"target has values outside [0, {c}) besides ignore_index {self.ignore_index}")
        if prediction.numel() and (prediction.min() < 0 or prediction.max() >= c):
            raise ValueError(f"prediction has values outside [0, {c}) on scored pixels")
        self.matrix += torch.bincount(target * c + prediction, minlength=c * c).view(c, c)

    def all_reduce(self) -> None:
        """Sums the counts over the ranks of the default process group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self) -> SegmentationScores:
        """Scores of the counts so far (see :func:`segmentation_scores`)."""
        return segmentation_scores(self.matrix.cpu())
