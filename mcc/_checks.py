"""Value checks shared by the library's entry points: NaN and inf refused where that costs no host sync."""

from __future__ import annotations

import os

import torch

__all__ = ["CHECK_ENV", "check_finite"]

CHECK_ENV = "MCC_CHECK_FINITE"


def check_finite(value: object, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` when a floating tensor holds NaN or infinite values.

    The check runs on CPU tensors (where it is a cheap pass over memory), and on accelerator tensors only
    when the environment variable ``MCC_CHECK_FINITE=1`` is set: there it waits for the device (a host
    sync), which the training step must not do at every call. Non-tensors and integer tensors pass.
    """
    if not torch.is_tensor(value) or not (value.is_floating_point() or value.is_complex()):
        return
    if value.device.type != "cpu" and os.environ.get(CHECK_ENV, "") in ("", "0"):
        return
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(value).sum())
    inf = int((~finite).sum()) - nan
    first = tuple(int(i) for i in (~finite).nonzero()[0])
    raise ValueError(
        f"{name} holds {nan} NaN and {inf} infinite value(s) (the first at index {first}): it must be finite"
    )
