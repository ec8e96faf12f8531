"""Random key masks made of square blocks of tokens (paper Sec. III-C, "Random Masking with Scales")."""

from __future__ import annotations

import math
import operator

import torch

__all__ = ["ScaledBernoulliKeyMask"]


class ScaledBernoulliKeyMask:
    """Samples block-structured key masks: True marks a dropped key (the paper's M_t = 1).

    A Bernoulli(``ratio``) draw on a coarse ``ceil(h/scale) x ceil(w/scale)`` grid is repeated
    ``scale x scale`` times (nearest upsampling) and cropped to ``h x w``, so dropped keys form contiguous
    square blocks. The paper uses ``ratio=0.75, scale=4`` on the 28x28 token grid of a 448 crop (7x7
    cells); the published run used ``ratio=0.95``.

    Args:
        ratio: probability that a cell is dropped, in [0, 1).
        scale: side of a cell in tokens, >= 1.

    Example:
        >>> sampler = ScaledBernoulliKeyMask(ratio=0.75, scale=4)
        >>> sampler(2, (28, 28), num_views=8).shape
        torch.Size([2, 8, 784])
    """

    def __init__(self, ratio: float = 0.75, scale: int = 4) -> None:
        if not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        if int(scale) != scale or scale < 1:
            raise ValueError(f"scale must be an integer >= 1, got {scale}")
        self.ratio = float(ratio)
        self.scale = int(scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio}, scale={self.scale})"

    def __call__(
        self,
        batch_size: int,
        grid: tuple[int, int] | int,
        num_views: int = 8,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draws ``num_views`` masks for each of ``batch_size`` images.

        Args:
            batch_size: number of images B, >= 1.
            grid: token grid ``(h, w)`` of the images; an int ``n`` means the square grid ``(n, n)``.
            num_views: masked views V per image, >= 1.
            generator: random source; the draw happens on the generator's device, so a seeded generator
                gives the same masks whatever ``device`` is.
            device: where the result lives (default: the generator's device, else CPU).

        Returns:
            bool tensor of shape (B, V, h*w), True = dropped key.
        """
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if int(num_views) != num_views or num_views < 1:
            raise ValueError(f"num_views must be a positive integer, got {num_views}")
        h, w = _grid_sides(grid)
        cells = (math.ceil(h / self.scale), math.ceil(w / self.scale))
        draw_device = generator.device if generator is not None else (device or "cpu")
        coarse = torch.rand((batch_size, num_views, *cells), generator=generator, device=draw_device).lt(
            self.ratio
        )
        fine = coarse.repeat_interleave(self.scale, dim=2).repeat_interleave(self.scale, dim=3)
        mask = fine[:, :, :h, :w].reshape(batch_size, num_views, h * w)
        return mask.to(device) if device is not None else mask


def _grid_sides(grid) -> tuple[int, int]:
    """``(h, w)`` from an int (square) or a pair of ints; ValueError naming ``grid`` otherwise."""
    sides = (grid, grid) if not isinstance(grid, tuple | list | torch.Size) else tuple(grid)
    try:
        if len(sides) != 2 or any(isinstance(s, bool) for s in sides):
            raise TypeError
        h, w = (operator.index(s) for s in sides)  # ints of any kind, never floats or strings
    except TypeError:
        h = w = 0
    if h < 1 or w < 1:
        raise ValueError(f"grid must be a positive int or two positive ints (h, w), got {grid!r}")
    return h, w
