"""Pixel-adaptive refinement (PAR) of masks by local image affinities (AFA, used by ToCo and MCC)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mcc._checks import check_finite

__all__ = ["PAR"]


def _shifted(padded: torch.Tensor, pad: int, dy: int, dx: int, size: tuple[int, int]) -> torch.Tensor:
    """View of ``x(p + (dy, dx))`` for every pixel p, read from ``x`` replicate-padded by ``pad``."""
    height, width = size
    return padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]


class PAR(nn.Module):
    """Pixel-adaptive refinement: masks diffused along a local, image-dependent affinity.

    Every pixel x looks at 8 neighbours per dilation d (the 3x3 ring scaled by d; borders replicated),
    K = 8 * len(dilations) in all (48 by default), ordered by dilation, then row-major around x. Its
    kernel over those neighbours is

        A(x, n) = softmax_n( mean_c -( |I_c(x+n) - I_c(x)| / (std_n I_c(x+.) + 1e-8) / w1 )^2 )
                  + w2 * softmax_n( -( p(n) / (std_n p + 1e-8) / w1 )^2 )

    where ``std_n I_c(x+.)`` is the unbiased standard deviation of the K neighbour values of x in colour
    channel c (computed per pixel and per channel, as in the published AFA code), and ``p(n)`` is the
    neighbour's distance: d for the 4 axial and sqrt(2)*d for the 4 diagonal neighbours. The masks,
    first resized to the image (bilinear, ``align_corners=True``), are then updated ``num_iter`` times by
    ``M(x) <- sum_n A(x, n) M(x + n)``.

    The rows of A sum to ``1 + w2``, not 1 (as published): each iteration scales a constant mask by
    ``1 + w2``. This changes no argmax, which is how the result is used.

    The affinity is computed once per call, shape (B, K, H, W), and reused by every iteration; the masks
    are propagated neighbour by neighbour from one padded copy, so no (B, C, K, H, W) tensor is ever
    built. Everything runs in float32, float64 for float64 inputs (autocast is switched off inside); the
    result has the masks' dtype.

    Args:
        dilations: neighbour distances, positive integers (published: 1, 2, 4, 8, 12, 24).
        num_iter: propagation steps, >= 0.
        w1: temperature of both Gaussian terms, > 0.
        w2: weight of the position term, >= 0.

    Example:
        >>> par = PAR(num_iter=10)
        >>> images = torch.rand(2, 3, 64, 80)            # RGB in [0, 1]
        >>> masks = torch.rand(2, 4, 16, 20).softmax(1)  # e.g. class probabilities at 1/4 resolution
        >>> par(images, masks).shape
        torch.Size([2, 4, 64, 80])
    """

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 10,
        w1: float = 0.3,
        w2: float = 0.01,
    ) -> None:
        super().__init__()
        dilations = tuple(dilations)
        if not dilations or any(int(d) != d or d < 1 for d in dilations):
            raise ValueError(f"dilations must be a non-empty sequence of positive integers, got {dilations}")
        if int(num_iter) != num_iter or num_iter < 0:
            raise ValueError(f"num_iter must be an integer >= 0, got {num_iter}")
        if not w1 > 0:
            raise ValueError(f"w1 must be > 0, got {w1}")
        if not w2 >= 0:
            raise ValueError(f"w2 must be >= 0, got {w2}")
        self.dilations = tuple(int(d) for d in dilations)
        self.num_iter = int(num_iter)
        self.w1 = float(w1)
        self.w2 = float(w2)
        ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
        self.offsets: tuple[tuple[int, int], ...] = tuple(
            (dy * d, dx * d) for d in self.dilations for dy, dx in ring
        )
        self.distances: tuple[float, ...] = tuple(
            d * (math.sqrt(2.0) if dy and dx else 1.0) for d in self.dilations for dy, dx in ring
        )

    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, w1={self.w1}, w2={self.w2}"

    @property
    def num_neighbours(self) -> int:
        """K, the number of neighbours of a pixel (8 per dilation)."""
        return len(self.offsets)

    def position_weights(self, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The position term ``softmax_n(-(p(n) / (std_n p + 1e-8) / w1)^2)``, shape (K,)."""
        distance = torch.tensor(self.distances, dtype=dtype, device=device)
        return (-((distance / (distance.std() + 1e-8) / self.w1) ** 2)).softmax(0)

    def affinity(self, images: torch.Tensor) -> torch.Tensor:
        """The refinement kernel A(x, n) of every pixel.

        Args:
            images: shape (B, 3, H, W) (any number of channels works), e.g. RGB in [0, 1].

        Returns:
            A, shape (B, K, H, W), float32; ``A[:, k]`` weighs the neighbour at ``self.offsets[k]``
            (``(dy, dx)``). Each pixel's weights sum to ``1 + w2``.
        """
        if images.ndim != 4:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        with torch.autocast(images.device.type, enabled=False):
            return self._affinity(images.to(_work_dtype(images)))

    def _affinity(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        size = (height, width)
        pad = max(self.dilations)
        padded = F.pad(images, [pad] * 4, mode="replicate")
        neighbours = [_shifted(padded, pad, dy, dx, size) for dy, dx in self.offsets]

        # Two passes (mean, then squared deviations) keep the std as accurate as torch.std.
        mean = torch.zeros_like(images)
        for value in neighbours:
            mean += value
        mean /= len(neighbours)
        var = torch.zeros_like(images)
        for value in neighbours:
            var.addcmul_(value - mean, value - mean)
        # Per pixel and channel: 1 / ((std + 1e-8) * w1), so each neighbour costs one multiply.
        inv_scale = ((var / (len(neighbours) - 1)).sqrt_() + 1e-8).mul_(self.w1).reciprocal_()
        del mean, var

        logits = images.new_empty(batch, len(neighbours), height, width)
        for k, value in enumerate(neighbours):
            logits[:, k] = ((value - images).abs_().mul_(inv_scale)).square_().mean(1).neg_()
        # In-place softmax over the neighbours: this tensor is the largest the refinement keeps.
        logits -= logits.amax(1, keepdim=True)
        affinity = logits.exp_()
        affinity /= affinity.sum(1, keepdim=True)
        affinity += self.w2 * self.position_weights(images.device, images.dtype)[:, None, None]
        return affinity

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Refines ``masks`` along the affinities of ``images``.

        Args:
            images: shape (B, 3, H, W), e.g. RGB in [0, 1] (float32, bf16 or fp16).
            masks: shape (B, C, h, w), any resolution (resized to H x W first), e.g. class probabilities.

        Returns:
            refined masks, shape (B, C, H, W), dtype of ``masks``.

        Raises:
            ValueError: ``images`` or ``masks`` is not 4-D, their batch sizes differ, or one holds NaN/inf
                (checked on CPU tensors, on an accelerator with ``MCC_CHECK_FINITE=1``).
        """
        if images.ndim != 4:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if masks.ndim != 4 or masks.shape[0] != images.shape[0]:
            raise ValueError(f"masks must have shape ({images.shape[0]}, C, h, w), got {tuple(masks.shape)}")
        check_finite(images, "images")
        check_finite(masks, "masks")
        size = (images.shape[-2], images.shape[-1])
        with torch.autocast(images.device.type, enabled=False):
            refined = masks.to(_work_dtype(masks))
            if refined.shape[-2:] != size:
                refined = F.interpolate(refined, size=size, mode="bilinear", align_corners=True)
            if self.num_iter == 0:
                return refined.to(masks.dtype)
            affinity = self._affinity(images.to(refined.dtype))
            pad = max(self.dilations)
            for _ in range(self.num_iter):
                padded = F.pad(refined, [pad] * 4, mode="replicate")
                shape = refined.shape
                del refined  # the padded copy is all the step reads: keep one of the two alive
                refined = padded.new_zeros(shape)
                for k, (dy, dx) in enumerate(self.offsets):
                    refined.addcmul_(affinity[:, k : k + 1], _shifted(padded, pad, dy, dx, size))
                del padded
        return refined.to(masks.dtype)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (exact checks); everything else, bf16/fp16 included, is refined in float32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32
