"""Counts the host syncs a CUDA run would make, on the CPU.

On a GPU, a value read on the host (``.item()``, ``bool(tensor)``, ``int``/``float``, ``.tolist()``,
``.cpu()``, ``.numpy()``) or a shape that depends on values (``nonzero``, boolean-mask indexing) waits
for the device to finish its queue. On the CPU nothing waits, so this counter tells device data from
host data by provenance: the tensors the test declares to be on the device (the parameters, buffers and
the batch tensors the loop moves) and everything computed from them are "device" tensors; a read of one
of them is a sync, and its result (``.cpu()``) is host data again. Tensors made from host data alone
stay host data (the data pipeline, AdamW's step counters, which live on the CPU on a GPU too). Not
tracked: a device tensor made from host data alone (a factory with ``device=``, ``host.to(device)``),
which on CPU cannot be told from host data; the tests declare what the loop moves.
"""

from __future__ import annotations

import collections
import traceback
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
_SCALAR = (aten._local_scalar_dense.default,)
# ops whose output shape depends on values: the device computes it, the host waits for it
_VALUE_SHAPED = (
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
)


def _value_shaped(func, args, kwargs) -> bool:
    if func in _VALUE_SHAPED:
        return True
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype == torch.bool for i in indices)  # boolean-mask indexing
    if func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size") is None
    return False


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/mcc/" in name and "sync_counter" not in name:
            return f"{name[name.rindex('/mcc/') + 1 :]}:{frame.lineno}"
    return "torch"


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as counter: counter.mark(*tensors); ...``; ``counter.counts``: (kind, where)."""

    def __init__(self) -> None:
        super().__init__()
        self._device: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.counts: collections.Counter = collections.Counter()
        self.active = True
        self._patched: list[tuple[str, object]] = []

    def mark(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            self._device[id(tensor)] = tensor

    def is_device(self, tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and self._device.get(id(tensor)) is tensor

    def total(self) -> int:
        return sum(self.counts.values())

    def by_place(self) -> collections.Counter:
        places: collections.Counter = collections.Counter()
        for (_, where), n in self.counts.items():
            places[where] += n
        return places

    def _count(self, kind: str) -> None:
        if self.active:
            self.counts[(kind, _caller())] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs, _ = tree_flatten((args, kwargs))
        on_device = any(self.is_device(t) for t in inputs)
        if on_device and func in _SCALAR:
            self._count("item/bool/int/float")
        elif on_device and _value_shaped(func, args, kwargs):
            self._count("nonzero")
        out = func(*args, **kwargs)
        if on_device:
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    self.mark(tensor)
        return out

    def __enter__(self):
        counter = self

        def reader(name):
            original = getattr(torch.Tensor, name)

            def read(tensor, *args, **kwargs):
                if not counter.is_device(tensor):
                    return original(tensor, *args, **kwargs)
                counter._count(name)
                with _disable_current_modes():
                    result = original(tensor, *args, **kwargs)
                    if name == "cpu" and result is tensor:  # the host copy is host data
                        result = result.clone()
                return result

            self._patched.append((name, original))
            setattr(torch.Tensor, name, read)

        for name in ("cpu", "tolist", "numpy"):
            reader(name)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._patched:
            setattr(torch.Tensor, name, original)
        self._patched.clear()
        return super().__exit__(*exc)
