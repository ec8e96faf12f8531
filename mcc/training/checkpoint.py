"""Atomic checkpoints and the random-number state that makes a resumed run continue exactly."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, or not a checkpoint)."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes ``state`` with :func:`torch.save`, atomically.

    The data goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
    ``path`` (:func:`os.replace` is atomic on POSIX and Windows). A crash or an exception at any point
    leaves the previous file at ``path`` untouched and removes the temporary file.

    Args:
        path: destination file; its directory is created when missing.
        state: a dict of tensors, numbers, strings, lists/tuples/dicts of those, and state dicts.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)  # makes the rename itself durable
    return path


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint`.

    Loads with ``weights_only=True`` (no arbitrary code runs): the states written by this package hold only
    tensors and plain Python values (see :func:`rng_state`).

    Args:
        path: the checkpoint file.
        map_location: where tensors go (default CPU), as in :func:`torch.load`.

    Returns:
        the saved dict.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        CheckpointError: the file is truncated, corrupt or holds something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError... by failure kind
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def rng_state() -> dict[str, Any]:
    """The state of every global random source: torch CPU and CUDA, Python ``random``, NumPy.

    NumPy's legacy state is stored as a tensor and a list so that :func:`load_checkpoint` can use
    ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002 - the global state
    state = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the sources saved by :func:`rng_state` (CUDA only where it was saved and is available)."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - the global state
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value
