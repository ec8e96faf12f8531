"""Segmentation pseudo labels: CAMs + two background levels, refined by PAR.

ToCo; docs/method.md section 2, step 9.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mcc._checks import check_finite
from mcc.cam.labels import box_mask, check_high_thre

__all__ = ["refine_cams_with_background"]


def refine_cams_with_background(
    par: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    cams: torch.Tensor,
    cls_label: torch.Tensor,
    *,
    high_thre: float | torch.Tensor = 0.7,
    low_thre: float = 0.25,
    img_box: torch.Tensor | None = None,
    ignore_index: int = 255,
    down_scale: int = 2,
) -> torch.Tensor:
    """The segmentation pseudo label: CAMs against a constant background, refined by PAR.

    For each background level t in (``high_thre``, ``low_thre``) a constant map of value t is put in
    front of the CAMs as class 0; images and maps are resized (bilinear, ``align_corners=False``) to
    ``(H // down_scale, W // down_scale)``; background and the present classes go through a softmax,
    then ``par``; the result is resized back to ``H x W`` (bilinear) and its argmax mapped to class ids.
    Foreground comes from the ``high_thre`` result; a pixel is background (0) only where both results
    say background; anything else, and everything outside ``img_box``, is ``ignore_index``.

    All images go through ``par`` in one call, with both levels stacked along the channel axis so the
    image affinity is computed once. Only classes present in at least one image of the batch are
    refined; within an image an absent class gets a logit of -inf, i.e. probability exactly 0, which
    equals removing it (PAR only mixes a class with itself, so it stays 0 and never wins the argmax).
    An image with no foreground class (a zero row of ``cls_label``, a negative image) is therefore
    background (0) everywhere inside its box, also when no image of the batch has a class.

    Args:
        par: the refinement, ``par(images, masks) -> masks``, e.g. :class:`~mcc.refine.PAR`
            (published: dilations 1, 2, 4, 8, 12, 24 and 10 iterations).
        images: the images PAR looks at, shape (B, 3, H, W), e.g. de-normalised RGB in [0, 1].
        cams: foreground CAMs, shape (B, C, h, w) at any resolution, e.g. min-max normalised.
        cls_label: multi-hot image labels, shape (B, C); nonzero = present; rows may be all zero.
        high_thre: background level whose result gives the foreground (paper: beta_fg = 0.7): a float,
            or a (B,) tensor, one level per image (DuPL's dynamic threshold, see
            :func:`~mcc.cam.image_threshold`; image b's background map is the constant ``high_thre[b]``).
        low_thre: second background level (paper: beta_bg = 0.25), <= ``high_thre`` (equal levels give
            one background level: a complete label without uncertain pixels).
        img_box: valid region of each image, shape (B, 4), integer rows ``(y0, y1, x0, x1)`` (this
            order, not ``(x0, y0, x1, y1)``) in pixels of ``images``, end exclusive, non-empty and inside
            ``H x W``.
        ignore_index: label of uncertain pixels and pixels outside the box.
        down_scale: PAR runs at ``1 / down_scale`` of the image size (published: 2), integer >= 1.

    Returns:
        label, shape (B, H, W), ``torch.long``: 0 background, ``c + 1`` for CAM channel c, or
        ``ignore_index``.

    Raises:
        ValueError: wrong shapes, a ``cls_label`` width that is not C, an ``img_box`` row that is empty
            or out of range, ``low_thre > high_thre``, or a ``down_scale`` that is not an integer in
            ``[1, min(H, W)]``.

    Example:
        >>> from mcc.refine import PAR
        >>> par = PAR(num_iter=2)
        >>> images, cams = torch.rand(2, 3, 64, 64), torch.rand(2, 20, 4, 4)
        >>> cls_label = torch.zeros(2, 20)
        >>> cls_label[:, 14] = 1
        >>> label = refine_cams_with_background(par, images, cams, cls_label)
        >>> label.shape, set(label.unique().tolist()) <= {0, 15, 255}
        (torch.Size([2, 64, 64]), True)
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if cams.ndim != 4 or cams.shape[0] != batch:
        raise ValueError(f"cams must have shape ({batch}, C, h, w), got {tuple(cams.shape)}")
    num_classes = cams.shape[1]
    if cls_label.shape != (batch, num_classes):
        raise ValueError(
            f"cls_label must have shape (B, C) = ({batch}, {num_classes}) to match cams, "
            f"got {tuple(cls_label.shape)}"
        )
    high_thre = check_high_thre(high_thre, low_thre, batch, images.device)
    for value, name in ((images, "images"), (cams, "cams"), (cls_label, "cls_label")):
        check_finite(value, name)
    if int(down_scale) != down_scale or not 1 <= down_scale <= min(height, width):
        raise ValueError(f"down_scale must be an integer in [1, {min(height, width)}], got {down_scale}")
    inside = None if img_box is None else box_mask(img_box, batch, (height, width), device=images.device)
    return _refine(par, images, cams, cls_label, high_thre, low_thre, inside, ignore_index, int(down_scale))


def _refine(
    par: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    cams: torch.Tensor,
    cls_label: torch.Tensor,
    high_thre: float | torch.Tensor,
    low_thre: float,
    inside: torch.Tensor | None,
    ignore_index: int,
    down_scale: int,
) -> torch.Tensor:
    """:func:`refine_cams_with_background` on checked arguments, the box given as a (B, H, W) bool map."""
    batch, _, height, width = images.shape
    device = images.device
    small = (height // down_scale, width // down_scale)
    # Read where cls_label lives: a host cls_label (as the training loop passes it) costs no device sync.
    present = torch.cat([cls_label.new_ones(batch, 1), cls_label], dim=1) != 0  # (B, 1+C)
    class_ids = present.any(0).nonzero()[:, 0]  # background + classes present anywhere in the batch
    absent = ~present[:, class_ids, None, None].to(device, non_blocking=True)  # (B, K, 1, 1)
    class_ids = class_ids.to(device, non_blocking=True)
    if class_ids.numel() == 1:
        # No image has a foreground class: the softmax over background alone is 1 everywhere and PAR
        # (a convex combination of neighbours) keeps it so, i.e. background at both levels.
        label = torch.zeros(batch, height, width, dtype=torch.long, device=device)
        return label if inside is None else label.masked_fill(~inside, ignore_index)

    with torch.autocast(device.type, enabled=False):
        small_images = F.interpolate(images.float(), size=small, mode="bilinear", align_corners=False)
        foreground = cams.to(device=device, dtype=torch.float32)[:, class_ids[1:] - 1]
        foreground = F.interpolate(foreground, size=small, mode="bilinear", align_corners=False)
        probs = []
        for level in (high_thre, low_thre):
            if torch.is_tensor(level):  # one level per image
                background = level.to(foreground)[:, None, None, None].expand(batch, 1, *small)
            else:
                background = foreground.new_full((batch, 1, *small), float(level))
            logits = torch.cat([background, foreground], dim=1).masked_fill(absent, float("-inf"))
            probs.append(logits.softmax(dim=1))
        refined = par(small_images, torch.cat(probs, dim=1)).float()
        refined = F.interpolate(refined, size=(height, width), mode="bilinear", align_corners=False)
    num_kept = class_ids.numel()
    # max(dim).indices is argmax (the first maximum on ties) at a fifth of its CPU time on this layout
    label_high = class_ids[refined[:, :num_kept].max(dim=1).indices]
    label_low = class_ids[refined[:, num_kept:].max(dim=1).indices]

    label = label_high.masked_fill(label_high == 0, ignore_index)
    label = label.masked_fill((label_high == 0) & (label_low == 0), 0)
    if inside is not None:
        label = label.masked_fill(~inside, ignore_index)
    return label
