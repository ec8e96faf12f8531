"""DuPL's dynamic foreground threshold: a cosine descent per class, the max over an image's classes.

DuPL (Wu et al., CVPR 2024; github.com/Wu0409/DuPL) lowers the foreground threshold of its CAM labels
from 0.7 to hand-set per-class targets over training; an image takes the highest threshold among its
classes. The results feed the ``high_thre`` of :func:`~mcc.cam.cam_to_label` and
:func:`~mcc.refine.refine_cams_with_background`, which accept one value per image.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_threshold", "image_threshold"]


def cosine_threshold(
    step: int, start: float | torch.Tensor, end: float | torch.Tensor, num_steps: int
) -> float | torch.Tensor:
    """Cosine descent from ``start`` to ``end`` over ``num_steps`` steps (DuPL's ``cosine_descent``).

    ``start + (end - start) * (1 - cos(pi * step / (num_steps - 1))) / 2``: ``start`` at step 0 (and
    before), ``end`` from step ``num_steps - 1`` on.

    Args:
        step: the step, any integer (DuPL VOC: ``iteration - 2000``).
        start: value at step 0: a float, or a tensor, e.g. (C,) per-class thresholds (DuPL: 0.7).
        end: value from step ``num_steps - 1`` on; a float, or a tensor of the shape of ``start``
            (DuPL VOC: 0.70 for aeroplane, bicycle, bird, boat, chair and train, 0.55 for the rest).
        num_steps: length of the descent, >= 2 (DuPL VOC: 18000).

    Returns:
        a float for float arguments; otherwise a new tensor of the tensor argument's dtype: the factor
        ``(1 - cos(pi * step / (num_steps - 1))) / 2`` is computed in float64, the interpolation
        ``start + (end - start) * factor`` in that dtype (as DuPL's float32 tensors do).

    Raises:
        ValueError: ``num_steps < 2``, or tensors of different shapes.

    Example:
        >>> cosine_threshold(0, 0.7, 0.55, 18000), cosine_threshold(17999, 0.7, 0.55, 18000)
        (0.7, 0.55)
        >>> cosine_threshold(9000, torch.tensor([0.7, 0.7]), torch.tensor([0.7, 0.55]), 18000)
        tensor([0.7000, 0.6250])
    """
    if int(num_steps) != num_steps or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps}")
    tensors = [t for t in (start, end) if torch.is_tensor(t)]
    if len(tensors) == 2 and start.shape != end.shape:
        raise ValueError(f"start and end must have one shape, got {tuple(start.shape)}, {tuple(end.shape)}")
    if step < 0:
        factor = 0.0
    elif step >= num_steps:
        factor = 1.0
    else:
        factor = (1.0 - math.cos(math.pi * step / (num_steps - 1))) / 2.0
    if not tensors:
        return float(start + (end - start) * factor)
    # The factor in float64 (DuPL: numpy), the interpolation in the tensors' dtype, as DuPL's tensors.
    like = tensors[0]
    start = torch.as_tensor(start, dtype=like.dtype, device=like.device)
    end = torch.as_tensor(end, dtype=like.dtype, device=like.device)
    return start + (end - start) * factor


def image_threshold(class_thre: torch.Tensor, cls_label: torch.Tensor) -> torch.Tensor:
    """Per image, the highest threshold among its classes (DuPL's per-image foreground threshold).

    An image without a class gets ``class_thre.max()`` (DuPL's code fails there); no label depends on
    it, since such an image is background wherever a threshold is applied.

    Args:
        class_thre: per-class thresholds, shape (C,).
        cls_label: multi-hot image labels, shape (B, C); nonzero = present.

    Returns:
        thresholds, shape (B,), dtype of ``class_thre``, on its device.

    Raises:
        ValueError: ``class_thre`` not 1-D, or ``cls_label`` not (B, C).

    Example:
        >>> image_threshold(torch.tensor([0.7, 0.55, 0.6]), torch.tensor([[0, 1, 1], [0, 0, 0]]))
        tensor([0.6000, 0.7000])
    """
    if not torch.is_tensor(class_thre) or class_thre.dim() != 1 or class_thre.numel() == 0:
        shape = tuple(class_thre.shape) if torch.is_tensor(class_thre) else type(class_thre).__name__
        raise ValueError(f"class_thre must be a non-empty (C,) tensor, got {shape}")
    if not torch.is_tensor(cls_label) or cls_label.dim() != 2 or cls_label.shape[1] != class_thre.shape[0]:
        shape = tuple(cls_label.shape) if torch.is_tensor(cls_label) else type(cls_label).__name__
        raise ValueError(f"cls_label must have shape (B, {class_thre.shape[0]}), got {shape}")
    present = cls_label.to(class_thre.device) != 0
    masked = class_thre[None, :].masked_fill(~present, float("-inf")).amax(dim=1)
    return torch.where(present.any(dim=1), masked, class_thre.max())
