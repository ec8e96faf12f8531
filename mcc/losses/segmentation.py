"""Segmentation loss on the decoder output, balanced between background and foreground pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._utils import autocast_off, check_tensor, full_precision

__all__ = ["segmentation_loss"]


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Cross entropy averaged separately over background and foreground pixels (L_seg, paper Eq. 7).

    ``L = 0.5 * (CE over background pixels + CE over foreground pixels)``, each term a mean over its
    own pixels (label 0, resp. label not in {0, ignore_index}), so that a large background does not
    drown small objects. A half with no pixels contributes 0, through the graph (its gradient is zero),
    so the loss is never NaN, even when every pixel is ignored.

    Args:
        logits: segmentation logits, shape (B, C, H, W), C = number of foreground classes + 1.
        label: pseudo label, shape (B, H, W), long, values in [0, C) or ``ignore_index``.
        ignore_index: label value of pixels without supervision.

    Returns:
        scalar loss tensor (float32, or float64 for float64 logits).

    Example:
        >>> logits = torch.randn(2, 21, 8, 8, requires_grad=True)
        >>> label = torch.randint(0, 21, (2, 8, 8))
        >>> segmentation_loss(logits, label).backward()
    """
    check_tensor("logits", logits, 4, floating=True)
    check_tensor("label", label, 3, integer=True)
    if label.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"`label` must have shape (B, H, W) = {(logits.shape[0], *logits.shape[2:])} to match `logits` "
            f"of shape {tuple(logits.shape)}, got {tuple(label.shape)}"
        )
    label = label.long()
    num_classes = logits.shape[1]
    # One host sync: an out-of-range class would otherwise fail deep inside cross_entropy.
    if bool((((label < 0) | (label >= num_classes)) & (label != ignore_index)).any()):
        raise ValueError(
            f"`label` has values outside [0, {num_classes}) other than ignore_index={ignore_index}"
        )
    return _segmentation_loss(logits, label, ignore_index)


def _segmentation_loss(logits: torch.Tensor, label: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """:func:`segmentation_loss` on checked arguments (no value check: no host sync)."""
    label = label.long()
    with autocast_off(logits):
        ce = F.cross_entropy(full_precision(logits), label, ignore_index=ignore_index, reduction="none")
        background = label == 0
        foreground = (label != 0) & (label != ignore_index)
        # clamp(min=1): an empty half gives 0 / 1 = 0 with a graph instead of 0 / 0 = NaN
        bg_loss = (ce * background).sum() / background.sum().clamp(min=1)
        fg_loss = (ce * foreground).sum() / foreground.sum().clamp(min=1)
        return 0.5 * (bg_loss + fg_loss)
