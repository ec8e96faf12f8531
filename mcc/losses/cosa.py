"""CoSA's segmentation-to-CAM loss: the teacher's segmentation supervises the student's CAM.

CoSA (Yang et al., "Weakly Supervised Co-training with Swapping Assignments for Semantic
Segmentation", ECCV 2024; github.com/youshyee/CoSA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._utils import autocast_off, check_tensor, full_precision

__all__ = ["seg_to_cam_loss"]


def seg_to_cam_loss(
    cam: torch.Tensor,
    teacher_seg_logits: torch.Tensor,
    cls_label: torch.Tensor,
    *,
    temperature: float = 0.01,
) -> torch.Tensor:
    """Soft-margin loss of the student's rectified CAM against the teacher's sharpened segmentation.

    1. ``P = softmax(L / temperature)`` over classes, where ``L`` is ``teacher_seg_logits`` with every
       foreground class absent from ``cls_label`` set to ``-1e5`` (background is always kept);
    2. ``Y = P[:, 1:]`` (foreground) resized bilinearly (``align_corners=False``) to the CAM's ``h x w``;
    3. the mean over the ``B*h*w`` pixels of ``-(1/C) sum_c [Y log sigmoid(x) + (1 - Y) log sigmoid(-x)]``
       with ``x = relu(cam)`` (the multilabel soft-margin loss per pixel).

    The target carries no gradient; an image without a class has ``Y = 0``.

    Args:
        cam: the student's raw CAM, shape (B, C, h, w) (e.g. the classifier applied to the patch tokens).
        teacher_seg_logits: the teacher's segmentation logits, shape (B, C + 1, H, W), background first
            (CoSA: the sum over scales and flips of :func:`~mcc.cam.multi_scale_cam_seg`).
        cls_label: multi-hot image labels, shape (B, C); nonzero = present.
        temperature: of the softmax (CoSA: 0.01).

    Returns:
        scalar loss tensor (float32, or float64 for float64 inputs).

    Raises:
        ValueError: wrong dimensions or shapes, or ``temperature <= 0``.

    Example:
        >>> cam = torch.randn(2, 20, 8, 8, requires_grad=True)
        >>> seg_to_cam_loss(cam, torch.randn(2, 21, 32, 32), torch.ones(2, 20)).backward()
    """
    check_tensor("cam", cam, 4, floating=True)
    check_tensor("teacher_seg_logits", teacher_seg_logits, 4, floating=True)
    check_tensor("cls_label", cls_label, 2)
    batch, num_classes, height, width = cam.shape
    if teacher_seg_logits.shape[:2] != (batch, num_classes + 1):
        raise ValueError(
            f"`teacher_seg_logits` must have shape (B, C + 1, H, W) = ({batch}, {num_classes + 1}, H, W) "
            f"to match `cam` {tuple(cam.shape)}, got {tuple(teacher_seg_logits.shape)}"
        )
    if cls_label.shape != (batch, num_classes):
        raise ValueError(
            f"`cls_label` must have shape ({batch}, {num_classes}), got {tuple(cls_label.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    with autocast_off(cam):
        with torch.no_grad():
            logits = full_precision(teacher_seg_logits.detach())
            present = torch.cat([cls_label.new_ones(batch, 1), cls_label], dim=1).to(logits.device) != 0
            logits = logits.masked_fill(~present[:, :, None, None], -1e5)
            target = (logits / temperature).softmax(dim=1)[:, 1:]
            target = F.interpolate(target, size=(height, width), mode="bilinear", align_corners=False)
        x = full_precision(cam).relu()
        pixel = -(target * F.logsigmoid(x) + (1 - target) * F.logsigmoid(-x)).mean(dim=1)
        return pixel.mean()
