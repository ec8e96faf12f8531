"""The bilateral filter of the regularised loss (rloss), on the permutohedral lattice, in PyTorch."""

from __future__ import annotations

import math
from numbers import Real

import torch

from mcc.refine.permutohedral import PermutohedralLattice, _no_autocast

__all__ = ["bilateral_filter", "bilateral_features"]


def _check_sigma(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def bilateral_features(image: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """Per-pixel features ``(x/sigma_xy, y/sigma_xy, r/sigma_rgb, g/sigma_rgb, b/sigma_rgb)``.

    Computed as the rloss extension computes them: standard deviations rounded to float32 first, then a
    float32 division (no reciprocal), pixels in row-major order (x the column, y the row).

    Args:
        image: RGB image, shape (B, 3, H, W), float.
        sigma_rgb: colour standard deviation, > 0.
        sigma_xy: spatial standard deviation in pixels, > 0.

    Returns:
        features, shape (B, H*W, 5), in the image's dtype.
    """
    batch, _, height, width = image.shape
    dtype, device = image.dtype, image.device
    # 0-dim tensors rather than Python scalars: CUDA would divide by a scalar through its reciprocal.
    s_xy = torch.tensor(sigma_xy, dtype=torch.float32).to(dtype=dtype, device=device)
    s_rgb = torch.tensor(sigma_rgb, dtype=torch.float32).to(dtype=dtype, device=device)
    x = torch.arange(width, dtype=dtype, device=device) / s_xy
    y = torch.arange(height, dtype=dtype, device=device) / s_xy
    xy = torch.stack([x.view(1, width).expand(height, width), y.view(height, 1).expand(height, width)], -1)
    rgb = (image / s_rgb).permute(0, 2, 3, 1).reshape(batch, height * width, 3)
    return torch.cat([xy.reshape(1, height * width, 2).expand(batch, -1, -1), rgb], dim=-1)


def bilateral_filter(
    image: torch.Tensor, values: torch.Tensor, sigma_rgb: float, sigma_xy: float
) -> torch.Tensor:
    """Bilateral (Gaussian in position and colour) filter of ``values`` guided by ``image``.

    The permutohedral-lattice approximation (Adams, Baek & Davis 2010) of

        out_i = sum_j exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)) v_j

    exactly as the compiled ``bilateralfilter`` extension of the regularised loss (rloss, Tang et al.
    2018) computes it, the self term j = i included and without normalisation: features
    ``(x/sigma_xy, y/sigma_xy, r/sigma_rgb, g/sigma_rgb, b/sigma_rgb)``, its blur weights, alpha,
    rounding and summation order. In float32 on the CPU the result equals that extension's bit for bit
    on every case we stored (``docs/crf.md``). Like that extension it returns the lattice's approximation
    as is, not normalised: about 0.43-0.60 times the exact sum above, with a relative error of 0.14-0.22
    (Frobenius norm of the filter matrix, measured on small images in ``tests/refine/test_bilateral.py``).

    Each image has its own lattice; all channels share it; on CUDA the whole batch is one computation
    (on the CPU one image after the other, faster there, with the same result). Runs on any device;
    float64 inputs are computed in float64 (for tests), anything else in float32, also under autocast
    (the result is then the float32 one). Two host syncs per lattice set-up, none in the filter.

    Args:
        image: guide image, RGB in 0-255, shape (B, 3, H, W), float.
        values: what to filter, shape (B, K, H, W), float, same B, H, W and device as ``image``.
        sigma_rgb: colour standard deviation (0-255 units), > 0.
        sigma_xy: spatial standard deviation in pixels, > 0.

    Returns:
        filtered values, shape (B, K, H, W), float64 if ``values`` is float64, else float32.
        Differentiable with respect to ``values`` (not ``image``).

    Raises:
        ValueError: wrong shapes, dtypes or devices, or a standard deviation that is not > 0.

    Example:
        >>> image = torch.rand(2, 3, 24, 32) * 255
        >>> probs = torch.softmax(torch.randn(2, 4, 24, 32), dim=1)
        >>> bilateral_filter(image, probs, sigma_rgb=15.0, sigma_xy=50.0).shape
        torch.Size([2, 4, 24, 32])
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a tensor of shape (B, 3, H, W), got {_describe(image)}")
    if not isinstance(values, torch.Tensor) or values.ndim != 4:
        raise ValueError(f"values must be a tensor of shape (B, K, H, W), got {_describe(values)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a floating-point tensor (RGB in 0-255), got {image.dtype}")
    if not values.is_floating_point():
        raise ValueError(f"values must be a floating-point tensor, got {values.dtype}")
    batch, channels, height, width = values.shape
    if (image.shape[0], image.shape[2], image.shape[3]) != (batch, height, width):
        raise ValueError(
            f"image (B, 3, H, W) = {tuple(image.shape)} and values (B, K, H, W) = {tuple(values.shape)} "
            "must have the same B, H, W"
        )
    if min(batch, channels, height, width) < 1:
        raise ValueError(f"values must have B, K, H, W >= 1, got {tuple(values.shape)}")
    if image.device != values.device:
        raise ValueError(
            f"image and values must be on the same device, got {image.device} and {values.device}"
        )
    sigma_rgb = _check_sigma("sigma_rgb", sigma_rgb)
    sigma_xy = _check_sigma("sigma_xy", sigma_xy)

    if image.device.type == "cpu" and batch > 1:
        # On the CPU one image at a time is faster (its lattice stays in cache) and gives the same bits.
        return torch.cat(
            [_filter(image[i : i + 1], values[i : i + 1], sigma_rgb, sigma_xy) for i in range(batch)]
        )
    return _filter(image, values, sigma_rgb, sigma_xy)


def _filter(image: torch.Tensor, values: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """The whole batch as one computation (checked arguments)."""
    batch, channels, height, width = values.shape
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    with _no_autocast(image.device):
        features = bilateral_features(image.detach().to(dtype), sigma_rgb, sigma_xy)
        try:
            # The lattice checks the features' finiteness in the one host sync its set-up needs.
            lattice = PermutohedralLattice(features)
        except ValueError as error:
            if "finite" in str(error):
                raise ValueError("image must be finite") from None
            raise
        flat = values.to(dtype).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        out = lattice.filter(flat)
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__
