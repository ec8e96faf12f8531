"""An independent re-derivation of the published regularised loss, for the tests.

Loops over images; every resize is spelled out as index lists (nearest) or interpolation matrices
(bilinear, ``align_corners=False``), in float64. The bilateral filter is passed in, so the tests can use
the exact Gaussian (``brute_force_filter``) on both sides.
"""

from __future__ import annotations

import math

import torch


def brute_force_filter(image, values, sigma_rgb, sigma_xy):
    """Exact Gaussian bilateral filter, O(N^2): ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j``.

    Features ``(x / sigma_xy, y / sigma_xy, r / sigma_rgb, g / sigma_rgb, b / sigma_rgb)``, the pixel itself
    included. ``image`` (B, 3, H, W), ``values`` (B, K, H, W) -> (B, K, H, W), in ``values``' dtype.
    """
    batch, channels, height, width = values.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=values.dtype), torch.arange(width, dtype=values.dtype), indexing="ij"
    )
    position = torch.stack([xs, ys]).to(values.device) / sigma_xy  # (2, H, W)
    out = []
    for b in range(batch):
        features = torch.cat([position, image[b].to(values.dtype) / sigma_rgb]).flatten(1).T  # (N, 5)
        kernel = torch.exp(-0.5 * torch.cdist(features, features).square())
        out.append((values[b].flatten(1) @ kernel.T).view(channels, height, width))
    return torch.stack(out)


def nearest_indices(size_in: int, size_out: int) -> list[int]:
    """Source index of each output index of a nearest resize: floor(i * in / out)."""
    return [min(i * size_in // size_out, size_in - 1) for i in range(size_out)]


def bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(out, in) matrix of a bilinear resize with half-pixel centres (align_corners=False), float64."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    scale = size_in / size_out
    for i in range(size_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), size_in - 1)
        i1 = min(i0 + 1, size_in - 1)
        frac = src - i0
        matrix[i, i0] += 1.0 - frac
        matrix[i, i1] += frac
    return matrix


def reference_energy(
    image,
    seg_logits,
    pseudo_label,
    img_box=None,
    *,
    filter_fn=brute_force_filter,
    weight=1e-7,
    sigma_rgb=15.0,
    sigma_xy=100.0,
    scale_factor=0.5,
    ignore_index=255,
):
    """Value and the published gradient (w.r.t. ``seg_logits``) of the regularised loss, float64.

    Returns:
        ``(value, grad)``: a Python float and a (B, K, H, W) float64 tensor.
    """
    batch, classes, height, width = seg_logits.shape
    small_h, small_w = math.floor(height * scale_factor), math.floor(width * scale_factor)
    rows, cols = nearest_indices(height, small_h), nearest_indices(width, small_w)
    resize_h, resize_w = bilinear_matrix(height, small_h), bilinear_matrix(width, small_w)
    logits = seg_logits.detach().double().cpu().requires_grad_(True)
    total = 0.0
    surrogate = 0.0
    for b in range(batch):
        prob = torch.softmax(logits[b], dim=0)  # (K, H, W)
        roi = torch.zeros(height, width, dtype=torch.float64)
        if img_box is None:
            roi[:] = 1.0
        else:
            y0, y1, x0, x1 = (int(v) for v in img_box[b])
            roi[y0:y1, x0:x1] = 1.0
        small_image = image[b].double().cpu()[:, rows][:, :, cols]
        small_prob = resize_h @ prob @ resize_w.T  # (K, h, w)
        small_roi = roi[rows][:, cols]
        small_label = pseudo_label[b].cpu()[rows][:, cols]
        with torch.no_grad():
            gate = small_roi - small_prob.max(dim=0).values
            gate[small_label == ignore_index] = 1.0
            gate = gate.clamp(min=0.0)
            masked = small_prob * small_roi
            filtered = filter_fn(small_image[None], masked[None], sigma_rgb, sigma_xy * scale_factor)[0]
            total += float(-(masked * gate * filtered).sum())
            # the published backward: d/d small_prob = -2 * weight * gate * W S * ROI / B
            published_grad = -2.0 * weight * gate * filtered * small_roi / batch
        surrogate = surrogate + (small_prob * published_grad).sum()
    surrogate.backward()
    assert classes == logits.shape[1]
    return weight * total / batch, logits.grad
