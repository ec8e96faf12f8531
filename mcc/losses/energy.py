"""The regularised loss of the published training step: a dense-CRF energy on the decoder's softmax.

Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation" (ECCV 2018), in the form the
published MCC/ToCo training step applies it to the segmentation head (docs/method.md section 8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcc.cam.labels import box_mask
from mcc.refine.bilateral import bilateral_filter

from ._utils import autocast_off, check_tensor, full_precision

__all__ = ["dense_energy_loss"]


def _filter(image: torch.Tensor, values: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """The bilateral filter W of the energy (one name to swap for the exact Gaussian in tests)."""
    return bilateral_filter(image, values, sigma_rgb, sigma_xy)


class _DenseEnergy(torch.autograd.Function):
    """``-sum(S * gate * W S) / B`` with the published backward ``-2 * gate * W S * ROI / B``."""

    @staticmethod
    def forward(ctx, image, prob, roi, unlabeled, sigma_rgb, sigma_xy):
        batch = prob.shape[0]
        # gate = ROI - max_k p, 1 on unlabelled pixels, clipped at 0; a constant of the energy
        gate = (roi - prob.amax(dim=1)).masked_fill(unlabeled, 1.0).clamp_min(0.0)
        masked = prob * roi[:, None]
        gated_filtered = _filter(image, masked, sigma_rgb, sigma_xy) * gate[:, None]
        ctx.save_for_backward(gated_filtered, roi)
        return -(masked * gated_filtered).sum() / batch

    @staticmethod
    def backward(ctx, grad_output):
        gated_filtered, roi = ctx.saved_tensors
        batch = gated_filtered.shape[0]
        grad_prob = (-2.0 / batch) * grad_output * gated_filtered * roi[:, None]
        return None, grad_prob, None, None, None, None


def dense_energy_loss(
    image: torch.Tensor,
    seg_logits: torch.Tensor,
    pseudo_label: torch.Tensor,
    img_box: torch.Tensor | None = None,
    *,
    weight: float = 1e-7,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 0.5,
    ignore_index: int = 255,
) -> torch.Tensor:
    """The regularised (dense-CRF) loss of the published training step.

    The published ``get_energy_loss`` + ``DenseEnergyLoss`` (the ``rloss`` code of Tang et al., ECCV 2018),
    docs/method.md section 8. With ``P = softmax(seg_logits)`` and ``R`` the region of interest (1 inside
    ``img_box``), the image, ``R`` and ``pseudo_label`` are resized by ``scale_factor`` with nearest
    neighbours and ``P`` bilinearly (``align_corners=False``), all to ``floor(H * scale_factor) x
    floor(W * scale_factor)``. At that size::

        S    = P * R                                  (per class)
        gate = clip(R - max_k P, 0), 1 where pseudo_label == ignore_index
        loss = -weight * sum(S * gate * W(S)) / B

    where ``W`` is the bilateral filter :func:`mcc.refine.bilateral_filter` with Gaussian kernels of
    ``sigma_rgb`` (colour, 0-255 units) and ``sigma_xy * scale_factor`` (pixels of the resized image).

    The gradient is the published custom backward, **not autograd's exact derivative** of the value:
    ``d loss / d P_resized = -2 * weight * gate * W(S) * R / B`` (the gate is treated as a constant and
    the filter as symmetric), carried on to ``seg_logits`` through the bilinear resize and the softmax.
    The filter runs in float32 (float64 for float64 logits) also under autocast.

    Args:
        image: RGB in 0-255, shape (B, 3, H, W), float: the network input de-normalised (not clamped,
            not rounded), e.g. ``x * std * 255 + mean * 255``.
        seg_logits: segmentation logits at the crop size, shape (B, K, H, W), K classes incl. background.
        pseudo_label: the segmentation pseudo label, shape (B, H, W), integer; ``ignore_index`` marks
            unlabelled pixels (their gate is 1).
        img_box: valid region of each crop, shape (B, 4), integer rows ``(y0, y1, x0, x1)`` in pixels, end
            exclusive, non-empty and inside the image. None = the whole crop.
        weight: factor of the energy (published: 1e-7; the step weighs the result again with ``w_reg``).
        sigma_rgb: colour bandwidth of the bilateral kernel (published: 15).
        sigma_xy: spatial bandwidth in pixels of the crop (published: 100); scaled by ``scale_factor``.
        scale_factor: resize factor applied before filtering (published: 0.5).
        ignore_index: label value of unlabelled pixels.

    Returns:
        the loss, a 0-dim tensor on the input's device (float32, or float64 for float64 logits).

    Raises:
        ValueError: an argument has the wrong shape, kind or range (the message names it).

    Example:
        >>> image = torch.rand(2, 3, 32, 32) * 255
        >>> logits = torch.randn(2, 21, 32, 32, requires_grad=True)
        >>> label = torch.randint(0, 21, (2, 32, 32))
        >>> loss = dense_energy_loss(image, logits, label, torch.tensor([[0, 32, 0, 32], [4, 28, 0, 30]]))
        >>> loss.backward()
    """
    check_tensor("seg_logits", seg_logits, 4, floating=True)
    check_tensor("image", image, 4, floating=True)
    check_tensor("pseudo_label", pseudo_label, 3, integer=True)
    batch, _, height, width = seg_logits.shape
    if image.shape != (batch, 3, height, width):
        raise ValueError(
            f"`image` must have shape (B, 3, H, W) = {(batch, 3, height, width)} to match `seg_logits` "
            f"of shape {tuple(seg_logits.shape)}, got {tuple(image.shape)}"
        )
    if pseudo_label.shape != (batch, height, width):
        raise ValueError(
            f"`pseudo_label` must have shape (B, H, W) = {(batch, height, width)} to match `seg_logits`, "
            f"got {tuple(pseudo_label.shape)}"
        )
    for name, tensor in (("image", image), ("pseudo_label", pseudo_label)):
        if tensor.device != seg_logits.device:
            raise ValueError(f"`{name}` is on {tensor.device}, `seg_logits` on {seg_logits.device}")
    for name, value in (("sigma_rgb", sigma_rgb), ("sigma_xy", sigma_xy), ("scale_factor", scale_factor)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    if not (isinstance(weight, (int, float)) and math.isfinite(weight)):
        raise ValueError(f"`weight` must be a finite number, got {weight!r}")
    # The output size of F.interpolate(scale_factor=s, recompute_scale_factor=True), as published.
    size = (math.floor(height * scale_factor), math.floor(width * scale_factor))
    if min(size) < 1:
        raise ValueError(
            f"`scale_factor` {scale_factor} shrinks the {height}x{width} crop to {size[0]}x{size[1]} pixels"
        )

    if img_box is None:
        roi = seg_logits.new_ones(batch, height, width, dtype=torch.bool)
    else:
        if not torch.is_tensor(img_box):
            raise ValueError(
                f"`img_box` must be a tensor of shape ({batch}, 4), got {type(img_box).__name__}"
            )
        # one fused check: (B, 4) integer rows (y0, y1, x0, x1), non-empty and inside the crop
        roi = box_mask(img_box, batch, (height, width), device=seg_logits.device)

    with autocast_off(seg_logits):
        prob = torch.softmax(full_precision(seg_logits), dim=1)
        dtype = prob.dtype
        roi = roi.to(dtype)
        small_image = F.interpolate(image.to(dtype), size=size, mode="nearest")
        small_prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
        small_roi = F.interpolate(roi[:, None], size=size, mode="nearest")[:, 0]
        # nearest resize of the label by the same index rule as the image (exact for integer values)
        small_label = F.interpolate(pseudo_label[:, None].to(torch.float64), size=size, mode="nearest")[:, 0]
        unlabeled = small_label == ignore_index
        energy = _DenseEnergy.apply(
            small_image, small_prob, small_roi, unlabeled, float(sigma_rgb), float(sigma_xy * scale_factor)
        )
        return weight * energy
