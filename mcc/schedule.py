"""Learning-rate schedule of MCC training: linear warm-up, then polynomial decay."""

from __future__ import annotations

import warnings

__all__ = ["poly_warmup_lr", "scale_step", "scaled_warmup_iters"]

PUBLISHED_ITERS = 20000  # the published VOC run (COCO: 80000)
PUBLISHED_WARMUP_ITERS = 1500

# (warmup_iters, max_iters) pairs already warned about: a loop calls this every step.
_WARNED: set[tuple[int, int]] = set()


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

    A ``warmup_iters`` longer than ``max_iters`` keeps the formula above (the whole run stays in the
    warm-up, ending near ``base_lr * max_iters / warmup_iters``) and issues one ``UserWarning`` per
    ``(warmup_iters, max_iters)`` pair; :class:`~mcc.training.TrainSettings` refuses it instead, and
    :func:`scaled_warmup_iters` gives the published warm-up scaled to a run.

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
    if warmup_iters > max_iters and (warmup_iters, max_iters) not in _WARNED:
        _WARNED.add((warmup_iters, max_iters))
        warnings.warn(
            f"poly_warmup_lr: warmup_iters ({warmup_iters}) > max_iters ({max_iters}): the run never leaves "
            "the warm-up (use scaled_warmup_iters(max_iters) or a shorter warm-up)",
            UserWarning,
            stacklevel=2,
        )
    if step < warmup_iters:
        return float(base_lr * (1 - (1 - step / warmup_iters) * (1 - warmup_ratio)))
    if step < max_iters:
        return float(base_lr * (1 - step / max_iters) ** power)
    return 0.0


def scale_step(step: int, max_iters: int, published_iters: int = PUBLISHED_ITERS) -> int:
    """A schedule step of the published run moved to a run of ``max_iters`` steps.

    ``round(step * max_iters / published_iters)`` (halves round up), at least 1 when ``step > 0`` so that
    a switch after the first step stays after it; 0 stays 0.

    Args:
        step: the step in the published schedule, >= 0.
        max_iters: length of the new run, >= 1.
        published_iters: length of the published run (VOC 20000, COCO 80000), >= 1.

    Returns:
        the step in the new run, an int.

    Example:
        >>> scale_step(2000, 800)
        80
    """
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    if published_iters < 1:
        raise ValueError(f"published_iters must be >= 1, got {published_iters}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step == 0:
        return 0
    return max(1, int(step * max_iters / published_iters + 0.5))


def scaled_warmup_iters(
    max_iters: int, published_iters: int = PUBLISHED_ITERS, warmup_iters: int = PUBLISHED_WARMUP_ITERS
) -> int:
    """The published warm-up (1500 of 20000 steps) scaled to a run of ``max_iters`` steps.

    Use it with :meth:`~mcc.MCCConfig.scaled_schedule` for a short or long run, e.g.
    ``TrainSettings(max_iters=800, warmup_iters=scaled_warmup_iters(800))`` (60 steps).

    Args:
        max_iters: length of the run, >= 1.
        published_iters: length of the published run (VOC 20000, COCO 80000).
        warmup_iters: the published warm-up length.

    Returns:
        :func:`scale_step` ``(warmup_iters, max_iters, published_iters)``.

    Example:
        >>> scaled_warmup_iters(800)
        60
    """
    return scale_step(warmup_iters, max_iters, published_iters)
