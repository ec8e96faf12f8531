"""Counts the tensor calls that make the host wait for the device (on the CPU: would make it wait)."""

from __future__ import annotations

import collections
import contextlib

import torch

# Tensor methods that copy a value to the host, and functions whose output size depends on the data.
METHODS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")
FUNCTIONS = ("nonzero", "unique", "masked_select", "bincount")


@contextlib.contextmanager
def count_host_syncs():
    """Yields a Counter of the calls above made inside the block, by name."""
    counts: collections.Counter = collections.Counter()
    patched = []

    def counting(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)

        patched.append((owner, name, original))
        setattr(owner, name, wrapper)

    for name in METHODS:
        counting(torch.Tensor, name)
    for name in FUNCTIONS:
        counting(torch, name)
    try:
        yield counts
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
