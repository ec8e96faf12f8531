"""Pseudo labels from CAMs by thresholding (paper Eq. 10, the reliable label Y')."""

from __future__ import annotations

import torch

from mcc._checks import check_finite

__all__ = ["box_mask", "cam_to_label", "check_high_thre", "check_img_box"]


BOX_ORDER = "(y0, y1, x0, x1)"


def check_img_box(img_box: torch.Tensor, batch: int, size: tuple[int, int], device=None) -> torch.Tensor:
    """Validates boxes in one fused check (one host sync on an accelerator) and returns them as long.

    Args:
        img_box: boxes, shape (B, 4), integer rows ``(y0, y1, x0, x1)`` (end exclusive, like slicing
            ``[y0:y1, x0:x1]``), non-empty and inside the map: ``0 <= y0 < y1 <= h``,
            ``0 <= x0 < x1 <= w``.
        batch: expected number of boxes B.
        size: ``(h, w)`` of the map the boxes refer to.
        device: device of the result (default: the boxes').

    Returns:
        the boxes, shape (B, 4), ``torch.long``.

    Raises:
        ValueError: ``img_box`` is not a (B, 4) integer tensor, or a row is empty or leaves the map (an
            ``(x0, y0, x1, y1)`` box usually does one or the other); the message names the first bad row.
    """
    img_box = torch.as_tensor(img_box)  # checked where it lives: a CPU box costs no device sync
    if img_box.shape != (batch, 4):
        raise ValueError(
            f"img_box must have shape ({batch}, 4) with rows {BOX_ORDER}, got {tuple(img_box.shape)}"
        )
    if img_box.dtype.is_floating_point or img_box.dtype == torch.bool or img_box.is_complex():
        raise ValueError(f"img_box must hold integers (rows {BOX_ORDER}), got {img_box.dtype}")
    img_box = img_box.long()
    height, width = size
    y0, y1, x0, x1 = img_box.unbind(1)
    ok = (0 <= y0) & (y0 < y1) & (y1 <= height) & (0 <= x0) & (x0 < x1) & (x1 <= width)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"img_box row {bad} = {img_box[bad].tolist()} is not a non-empty box {BOX_ORDER} inside the "
            f"{height}x{width} map: need 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width} "
            "(rows are (y0, y1, x0, x1), end exclusive; reorder an (x0, y0, x1, y1) box)"
        )
    return img_box if device is None else img_box.to(device, non_blocking=True)


def _inside(img_box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) bool, True within each long box; no checks (an empty or inverted box selects nothing)."""
    height, width = size
    y0, y1, x0, x1 = img_box.unbind(1)
    rows = torch.arange(height, device=img_box.device)
    cols = torch.arange(width, device=img_box.device)
    inside_rows = (rows >= y0[:, None]) & (rows < y1[:, None])
    inside_cols = (cols >= x0[:, None]) & (cols < x1[:, None])
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def box_mask(img_box: torch.Tensor, batch: int, size: tuple[int, int], device=None) -> torch.Tensor:
    """Boolean map of the pixels inside each image's valid box.

    Args:
        img_box: boxes, shape (B, 4), integer rows ``(y0, y1, x0, x1)`` with ``0 <= y0 < y1 <= h`` and
            ``0 <= x0 < x1 <= w`` (end exclusive, like slicing ``[y0:y1, x0:x1]``; non-empty).
        batch: expected number of boxes B.
        size: ``(h, w)`` of the label the boxes refer to.
        device: device of the result (default: the boxes').

    Returns:
        inside, shape (B, h, w), True within the box.

    Raises:
        ValueError: ``img_box`` has the wrong shape, is not integer, has an empty row or lies outside
            ``size`` (see :func:`check_img_box`).
    """
    return _inside(check_img_box(img_box, batch, size, device=device), size)


def cam_to_label(
    cam: torch.Tensor,
    cls_label: torch.Tensor,
    *,
    bkg_thre: float | None = None,
    low_thre: float | None = None,
    high_thre: float | torch.Tensor | None = None,
    img_box: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Turns CAMs into a segmentation label by thresholding the best present class.

    With ``score, cls = max_c(cam * cls_label)`` over the present classes (``cls_label > 0``; an absent
    class never wins) the label is ``cls + 1`` (class ids start at 1,
    background is 0), then either

    * two-way (``bkg_thre``, used to score CAMs): 0 where ``score <= bkg_thre``;
    * three-way (``low_thre``/``high_thre``, the paper's beta_bg/beta_fg, Eq. 10): 0 where
      ``score <= low_thre``, ``ignore_index`` where ``low_thre < score <= high_thre``, the class above.

    Pixels outside ``img_box`` get ``ignore_index``. Give either ``bkg_thre`` or both ``low_thre`` and
    ``high_thre``.

    Args:
        cam: class activation maps, shape (B, C, h, w), e.g. min-max normalised to [0, 1].
        cls_label: multi-hot image labels over foreground classes, shape (B, C). A zero row (an image
            with no foreground class) has no class to win: background everywhere.
        bkg_thre: background threshold of the two-way label.
        low_thre: background threshold of the three-way label (beta_bg, paper: 0.25).
        high_thre: foreground threshold of the three-way label (beta_fg, paper: 0.7), >= ``low_thre``;
            a float, or a (B,) tensor with one threshold per image (DuPL's dynamic threshold, see
            :func:`~mcc.cam.image_threshold`), compared with the scores by torch as it is.
        img_box: valid region of each image, shape (B, 4), integer rows ``(y0, y1, x0, x1)`` (this
            order, not ``(x0, y0, x1, y1)``) in the label's own pixel units (for a token-grid label: token
            units), end exclusive, non-empty and inside ``h x w``.
        ignore_index: value of uncertain pixels and of pixels outside the box.

    Returns:
        label, shape (B, h, w), ``torch.long``.

    Raises:
        ValueError: wrong shapes, a ``cls_label`` width that is not C, an ``img_box`` row that is empty
            or out of range, thresholds that are not exactly one of the two modes (or
            ``low_thre > high_thre``), or NaN/inf in ``cam`` or ``cls_label`` (checked on CPU tensors;
            on an accelerator with ``MCC_CHECK_FINITE=1``, see :func:`mcc._checks.check_finite`).

    Example:
        >>> cam = torch.tensor([[[[0.1, 0.5, 0.9]]]])
        >>> cam_to_label(cam, torch.ones(1, 1), low_thre=0.25, high_thre=0.7)
        tensor([[[  0, 255,   1]]])
    """
    if cam.ndim != 4:
        raise ValueError(f"cam must have shape (B, C, h, w), got {tuple(cam.shape)}")
    batch, num_classes, height, width = cam.shape
    if cls_label.shape != (batch, num_classes):
        raise ValueError(
            f"cls_label must have shape (B, C) = ({batch}, {num_classes}) to match cam, "
            f"got {tuple(cls_label.shape)}"
        )
    two_way = bkg_thre is not None
    three_way = low_thre is not None or high_thre is not None
    if two_way == three_way or (three_way and (low_thre is None or high_thre is None)):
        raise ValueError(
            "give either bkg_thre (two-way label) or both low_thre and high_thre (three-way label), "
            f"got bkg_thre={bkg_thre}, low_thre={low_thre}, high_thre={high_thre}"
        )
    if three_way:
        high_thre = check_high_thre(high_thre, low_thre, batch, cam.device)
    check_finite(cam, "cam")
    check_finite(cls_label, "cls_label")
    inside = None if img_box is None else box_mask(img_box, batch, (height, width), device=cam.device)
    return _label_from_cam(cam, cls_label, bkg_thre, low_thre, high_thre, inside, ignore_index)


def check_high_thre(
    high_thre: float | torch.Tensor, low_thre: float, batch: int, device=None
) -> float | torch.Tensor:
    """``high_thre`` as a float or a (B,) tensor on ``device``, checked against ``low_thre``.

    Raises:
        ValueError: a tensor that is not (B,) and floating, or ``low_thre > high_thre`` (for some image).
    """
    if not torch.is_tensor(high_thre):
        if low_thre > high_thre:
            raise ValueError(f"low_thre ({low_thre}) must not exceed high_thre ({high_thre})")
        return high_thre
    if high_thre.shape != (batch,) or not high_thre.is_floating_point():
        raise ValueError(
            f"high_thre must be a float or a floating ({batch},) tensor (one per image), "
            f"got {high_thre.dtype} of shape {tuple(high_thre.shape)}"
        )
    too_low = high_thre < low_thre
    if bool(too_low.any()):
        bad = int(too_low.nonzero()[0, 0])
        raise ValueError(f"low_thre ({low_thre}) must not exceed high_thre[{bad}] ({float(high_thre[bad])})")
    return high_thre if device is None else high_thre.to(device)


def _label_from_cam(
    cam: torch.Tensor,
    cls_label: torch.Tensor,
    bkg_thre: float | None,
    low_thre: float | None,
    high_thre: float | torch.Tensor | None,
    inside: torch.Tensor | None,
    ignore_index: int,
) -> torch.Tensor:
    """:func:`cam_to_label` on checked arguments, the valid region given as a (B, h, w) bool map."""
    # Compare in float32 at least: a bf16 score would round the thresholds (0.3 -> 0.30078125).
    cam = cam.to(torch.promote_types(cam.dtype, torch.float32))
    present = cls_label.to(device=cam.device, dtype=cam.dtype)[:, :, None, None]
    # an absent class never wins, not even over a NaN or negative CAM value of a present one
    score, cls = torch.where(present > 0, cam * present, float("-inf")).max(dim=1)
    label = (cls + 1).masked_fill_(score.isnan(), ignore_index)  # NaN (unchecked on an accelerator)
    # masked_fill rather than label[mask] = v: boolean-mask indexing may read the mask on the host
    if bkg_thre is not None:
        label = label.masked_fill(score <= bkg_thre, 0)
    else:
        if torch.is_tensor(high_thre):  # one threshold per image
            high_thre = high_thre.to(score.device)[:, None, None]
        label = label.masked_fill(score <= high_thre, ignore_index).masked_fill(score <= low_thre, 0)
    if inside is not None:
        label = label.masked_fill(~inside, ignore_index)
    return label
