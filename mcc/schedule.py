"""Learning-rate schedule of MCC training: linear warm-up, then polynomial decay."""

from __future__ import annotations

__all__ = ["poly_warmup_lr"]


def poly_warmup_lr(
    step: int,
    base_lr: float,
    *,
    warmup_iters: int = 1500,
    warmup_ratio: float = 1e-6,
    max_iters: int = 20000,
    power: float = 0.9,
) -> float:
    """Learning rate after ``step`` optimiser steps: linear warm-up then poly decay (ToCo/MCC schedule).

    * ``step < warmup_iters``: ``base_lr * (1 - (1 - step / warmup_iters) * (1 - warmup_ratio))``,
      i.e. linear from ``base_lr * warmup_ratio`` at step 0 towards ``base_lr``;
    * ``step < max_iters``: ``base_lr * (1 - step / max_iters) ** power``;
    * ``step >= max_iters``: ``0.0``.

    Args:
        step: number of optimiser steps already taken (0 for the first step), >= 0.
        base_lr: the peak learning rate of the parameter group.
        warmup_iters: length of the linear warm-up (0 for none).
        warmup_ratio: start of the warm-up as a fraction of ``base_lr``.
        max_iters: total number of steps; the rate is 0 from there on.
        power: exponent of the polynomial decay.

    Returns:
        the learning rate, a Python float.

    Example:
        >>> poly_warmup_lr(10000, 1.0, warmup_iters=0, power=1.0)
        0.5
        >>> poly_warmup_lr(20000, 6e-5)
        0.0
        >>> for group, base in zip(optimizer.param_groups, base_lrs):  # doctest: +SKIP
        ...     group["lr"] = poly_warmup_lr(step, base)
    """
    if step < 0:
        raise ValueError(f"`step` must be >= 0, got {step}")
    if warmup_iters < 0:
        raise ValueError(f"`warmup_iters` must be >= 0, got {warmup_iters}")
    if max_iters <= 0:
        raise ValueError(f"`max_iters` must be positive, got {max_iters}")
    if step < warmup_iters:
        return float(base_lr * (1 - (1 - step / warmup_iters) * (1 - warmup_ratio)))
    if step < max_iters:
        return float(base_lr * (1 - step / max_iters) ** power)
    return 0.0
