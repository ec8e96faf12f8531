"""Helpers shared by the losses: argument checks and full-precision regions under autocast."""

from __future__ import annotations

import contextlib

import torch


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` in float32, or unchanged when it already is float32/float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that disables autocast on ``x``'s device, so float32 inputs stay float32 inside."""
    try:
        return torch.autocast(device_type=x.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know (e.g. meta): nothing to disable
        return contextlib.nullcontext()


def check_tensor(
    name: str,
    x: object,
    ndim: int,
    *,
    floating: bool = False,
    boolean: bool = False,
    integer: bool = False,
) -> torch.Tensor:
    """Raise ``ValueError`` naming ``name`` unless ``x`` is a tensor of ``ndim`` dims and the right kind."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating point tensor, got {x.dtype}")
    if boolean and x.dtype != torch.bool:
        raise ValueError(f"`{name}` must be a bool tensor (True = dropped/positive), got {x.dtype}")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise ValueError(f"`{name}` must be an integer (torch.long) tensor, got {x.dtype}")
    return x
