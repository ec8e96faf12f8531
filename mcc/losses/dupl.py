"""DuPL's losses: consistency on a strong view and the two students' feature discrepancy.

DuPL (Wu et al., "DuPL: Dual Student with Trustworthy Progressive Learning for Robust Weakly
Supervised Semantic Segmentation", CVPR 2024; github.com/Wu0409/DuPL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._utils import autocast_off, check_tensor, full_precision

__all__ = ["consistency_loss", "discrepancy_loss"]


def consistency_loss(
    strong_logits: torch.Tensor,
    clean_logits: torch.Tensor,
    label: torch.Tensor,
    *,
    conf_thre: float = 0.9,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Supervises the pixels the pseudo label leaves out with confident predictions (DuPL's consistency).

    ``target = argmax_k clean_logits`` and ``conf = max_k softmax(clean_logits)`` (no gradient); on the
    mask ``(label == ignore_index) & (conf > conf_thre)`` the strong view's logits learn ``target``:
    the sum of ``CE(strong_logits, target)`` over the mask of the whole batch divided by the number of
    mask pixels; 0 (finite, with zero gradient) when the mask is empty. Only ``strong_logits`` gets a
    gradient.

    Args:
        strong_logits: logits of the strong view, shape (B, K, H, W), in the frame of ``clean_logits``:
            the caller undoes the view's flip and resizes it (bilinear, ``align_corners=False``) to the
            label size.
        clean_logits: logits of the clean view, shape (B, K, H, W).
        label: pseudo label, shape (B, H, W), integer (DuPL: the other student's label after
            :func:`~mcc.refine.gmm_noise_filter`).
        conf_thre: confidence above which an ignored pixel is supervised (DuPL: 0.9).
        ignore_index: label value of the pixels to regularise.

    Returns:
        scalar loss tensor (float32, or float64 for float64 logits).

    Raises:
        ValueError: tensors of the wrong dimension or kind, or shapes that do not match.

    Example:
        >>> strong = torch.randn(2, 21, 8, 8, requires_grad=True)
        >>> label = torch.full((2, 8, 8), 255)
        >>> consistency_loss(strong, 10 * torch.randn(2, 21, 8, 8), label).backward()
    """
    check_tensor("strong_logits", strong_logits, 4, floating=True)
    check_tensor("clean_logits", clean_logits, 4, floating=True)
    check_tensor("label", label, 3, integer=True)
    if strong_logits.shape != clean_logits.shape:
        raise ValueError(
            f"`strong_logits` {tuple(strong_logits.shape)} must have the shape of `clean_logits` "
            f"{tuple(clean_logits.shape)} (undo the strong view's flip and resize it to the label size)"
        )
    expected = (strong_logits.shape[0], *strong_logits.shape[2:])
    if label.shape != expected:
        raise ValueError(f"`label` must have shape (B, H, W) = {expected}, got {tuple(label.shape)}")
    with autocast_off(strong_logits):
        with torch.no_grad():
            probs = full_precision(clean_logits.detach()).softmax(dim=1)
            conf, target = probs.max(dim=1)
            mask = (label.to(target.device) == ignore_index) & (conf > conf_thre)
        pixel = F.cross_entropy(full_precision(strong_logits), target, reduction="none")
        pixel = torch.where(mask, pixel, pixel.new_zeros(()))
        return pixel.sum() / mask.sum().clamp(min=1)


def discrepancy_loss(features_a: torch.Tensor, features_b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DuPL's discrepancy loss: pushes two students' feature maps apart by their cosine similarity.

    With ``a`` and ``b`` flattened to (B, D, h*w) and ``c(x, y)`` the cosine similarity over the spatial
    positions (one per image and channel, ``F.cosine_similarity(x, y, dim=-1, eps=eps)``), the value is
    ``(1 + mean c(sg(a), b)) + (1 + mean c(sg(b), a))`` = ``2 + 2 mean c(a, b)``, ``sg`` = stop gradient.
    Each input thus receives the gradient of ``1 + mean c`` with the other held fixed: half the
    gradient of the written expression ``2 + 2 mean c(a, b)``. DuPL weights it 0.1 (COCO 0.05).

    Args:
        features_a: one student's features, shape (B, D, h, w).
        features_b: the other's, same shape.
        eps: of the cosine similarity (DuPL: 1e-6).

    Returns:
        scalar loss tensor in [0, 4].

    Raises:
        ValueError: tensors that are not 4-D floating of one shape.

    Example:
        >>> a = torch.randn(2, 8, 4, 4, requires_grad=True)
        >>> float(discrepancy_loss(a, a.detach().clone()).detach())  # identical features: 2 + 2 * 1
        4.0
    """
    check_tensor("features_a", features_a, 4, floating=True)
    check_tensor("features_b", features_b, 4, floating=True)
    if features_a.shape != features_b.shape:
        raise ValueError(
            f"`features_a` {tuple(features_a.shape)} and `features_b` {tuple(features_b.shape)} must have "
            "one shape"
        )
    a = features_a.flatten(2)
    b = features_b.flatten(2)
    to_b = 1 + F.cosine_similarity(a.detach(), b, dim=-1, eps=eps).mean()
    to_a = 1 + F.cosine_similarity(b.detach(), a, dim=-1, eps=eps).mean()
    return to_b + to_a
