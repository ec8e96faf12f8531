"""Atomic checkpoints and the random-number state that makes a resumed run continue exactly."""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "check_resume",
    "load_checkpoint",
    "load_model_state",
    "net_from_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


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
        replace_with_default_mode(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)  # makes the rename itself durable
    return path


def replace_with_default_mode(tmp_name: str | os.PathLike, path: Path) -> None:
    """:func:`os.replace` after giving the temporary file the mode a plain ``open`` would have.

    :func:`tempfile.mkstemp` creates files readable by their owner only (0600); results and checkpoints
    are meant to be shared like any other file (0666 less the umask).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    os.replace(tmp_name, path)


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
        raise CheckpointError(f"checkpoint {path} {_load_failure(error)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _load_failure(error: Exception) -> str:
    """Why :func:`torch.load` failed, in one short clause (torch's own message runs to many lines)."""
    text = str(error)
    if "Weights only load failed" in text or "weights_only" in text:
        return (
            "is corrupt or not a torch checkpoint: it cannot be loaded safely (or it holds Python objects "
            "other than tensors and plain values, which an mcc checkpoint never does)"
        )
    first = " ".join(text.split("\n")[0].split())
    if "central directory" in first or isinstance(error, EOFError):
        return f"is truncated or not a torch file ({first[:120]})"
    return f"is truncated or corrupt ({type(error).__name__}: {first[:160]})"


def net_from_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], map_location: str | torch.device | None = "cpu"
):
    """Rebuilds the :class:`~mcc.MCCNet` a training checkpoint describes and loads its weights.

    Works with the checkpoints of :func:`~mcc.training.train` when its ``extra_config`` names the timm
    encoder (``"model"``, optionally ``"model_kwargs"`` for :func:`timm.create_model` and
    ``"crop_size"``), as the training commands (``mcc-train-voc``, ``mcc-train-coco``) write them. The
    encoder is built with random weights (no download), then the checkpoint's weights are loaded
    strictly. The network's ``pixel_mean``/``pixel_std`` are the recorded ``"pixel_mean"``/``"pixel_std"``
    (the image normalisation of the run; ImageNet's for checkpoints that record none): normalise the
    images it is given with them, e.g. ``VOCSegmentation(..., mean=net.pixel_mean.flatten().tolist(),
    std=net.pixel_std.flatten().tolist())``.

    Args:
        checkpoint: a checkpoint file, or the dict :func:`load_checkpoint` returned.
        map_location: where the tensors are loaded when ``checkpoint`` is a path.

    Returns:
        the network, on ``map_location``'s device (CPU by default), in training mode. Its attribute
        ``class_names`` holds the class names the run recorded (background first; every training command
        records them), or None for a checkpoint that records none.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is not readable, or the checkpoint does not describe its network (no
            ``config`` record with ``mcc``, ``num_classes`` and the encoder name), or its weights do not
            fit the network it describes.

    Example:
        >>> net = net_from_checkpoint("work_dirs/mcc_voc/best.pt").eval()  # doctest: +SKIP
    """
    from mcc.network import MCCConfig, MCCNet
    from mcc.training.vit import build_vit

    name = "the checkpoint"
    if not isinstance(checkpoint, dict):
        name = f"checkpoint {checkpoint}"
        checkpoint = load_checkpoint(checkpoint, map_location=map_location)
    record = checkpoint.get("config") or {}
    extra = record.get("extra") or {}
    missing = [key for key in ("mcc", "num_classes") if key not in record]
    if "model" not in extra:
        missing.append("extra.model")
    if missing or "model" not in checkpoint:
        raise CheckpointError(
            f"{name} does not describe its network (missing: {', '.join(missing or ['model'])}); "
            "it must come from mcc.training.train with extra_config={'model': <timm name>, 'crop_size': N}, "
            "as mcc-train-voc / mcc-train-coco write it"
        )
    mcc = {k: tuple(v) if isinstance(v, list) else v for k, v in record["mcc"].items()}
    known = {f.name for f in dataclasses.fields(MCCConfig)}
    unknown = sorted(set(mcc) - known)
    if unknown:
        raise CheckpointError(
            f"{name} records MCCConfig fields this version of mcc does not have: {', '.join(unknown)} "
            "(written by a newer mcc?)"
        )
    if "decoder_bias" not in mcc and "decoder.conv6.bias" in checkpoint["model"]:
        mcc["decoder_bias"] = True  # written before the field existed, when the decoder had biases
    vit = build_vit(
        extra["model"],
        pretrained=False,
        img_size=extra.get("crop_size", 448),
        **(extra.get("model_kwargs") or {}),
    )
    mean, std = _recorded_pixel_stats(extra, name)
    net = MCCNet(vit, record["num_classes"], MCCConfig(**mcc), pixel_mean=mean, pixel_std=std)
    load_model_state(net, checkpoint["model"], f"{name}: its weights do not fit the network it describes")
    names = extra.get("class_names")
    valid = isinstance(names, list) and len(names) == net.num_classes + 1
    net.class_names = [str(n) for n in names] if valid else None  # the run's classes, background first
    return net.to(map_location) if isinstance(map_location, str | torch.device) else net


def load_model_state(net: torch.nn.Module, state_dict: dict[str, Any], what: str) -> None:
    """``net.load_state_dict(state_dict)`` (strict); weights that do not fit raise a short error.

    Raises:
        CheckpointError: ``what``, then how many keys are missing, unexpected or of another shape, with
            the first of each (torch's own message lists every tensor).
    """
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as error:
        own = net.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        shapes = [
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in state_dict
            and hasattr(state_dict[k], "shape")
            and tuple(state_dict[k].shape) != tuple(v.shape)
        ]
        parts = [
            f"{len(items)} {label} (first: {items[0]})"
            for items, label in (
                (missing, "missing"),
                (unexpected, "unexpected"),
                (shapes, "of another shape"),
            )
            if items
        ]
        detail = "; ".join(parts) or str(error).splitlines()[0]
        raise CheckpointError(f"{what}: {detail}") from None


# settings a resumed run may change without a word: where files go, how often it logs, evaluates, saves
_RESUME_FREE = {
    "resume", "stop_after", "work_dir", "progress", "tensorboard", "log_every", "eval_every", "eval_at_end",
    "eval_max_images", "save_every", "save_best", "num_workers",
}  # fmt: skip
_NETWORK_KEYS = ("model", "model_kwargs", "crop_size")


def check_resume(state: dict[str, Any], record: dict[str, Any], name: str) -> list[str]:
    """Compares a checkpoint's ``config`` record with the run that resumes from it.

    Args:
        state: the checkpoint (as :func:`load_checkpoint` returns it).
        record: the resuming run's record: ``train`` (its settings), ``mcc`` (its config), ``num_classes``
            and ``extra`` (as :func:`~mcc.training.train` writes them into its checkpoints).
        name: how to call the checkpoint in messages.

    Returns:
        one line per changed setting: its name, the checkpoint's value and the value the resumed run
        uses (the run's). Settings that do not change the result (logging, evaluation and save
        intervals, workers, where files go) are not compared.

    Raises:
        CheckpointError: the checkpoint is of another network: other classes or encoder (``extra``'s
            ``model``, ``model_kwargs``).
    """
    old = state.get("config") or {}
    old_extra, new_extra = old.get("extra") or {}, record.get("extra") or {}
    if "num_classes" in old and old["num_classes"] != record.get("num_classes"):
        raise CheckpointError(
            f"{name} was trained with {old['num_classes']} foreground classes, this run has "
            f"{record.get('num_classes')}: resume on the same dataset, or start a new run elsewhere"
        )
    for key in _NETWORK_KEYS[:2]:
        if key in old_extra and key in new_extra and old_extra[key] != new_extra[key]:
            raise CheckpointError(
                f"{name} was trained with {key} {old_extra[key]!r}, this run builds {new_extra[key]!r}: "
                "resume with the checkpoint's settings, or start a new run in another work directory"
            )
    changes = []
    sections = (
        ("train", "", _RESUME_FREE),
        ("mcc", "mcc.", set()),
        ("extra", "", {"args", *_NETWORK_KEYS[:2]}),
    )
    for section, prefix, free in sections:
        before, after = old.get(section) or {}, record.get(section) or {}
        for key in sorted(set(before) & set(after) - free):
            a, b = _plain(before[key]), _plain(after[key])
            if a != b:
                changes.append(f"{prefix}{key} changed: {a!r} in the checkpoint, the resumed run uses {b!r}")
    return changes


def _plain(value: Any) -> Any:
    """JSON-like form, so that tuples and lists compare equal."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _recorded_pixel_stats(extra: dict[str, Any], name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The recorded image normalisation; ImageNet's for checkpoints written before it was recorded."""
    from mcc.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pixel_stats

    try:
        return pixel_stats(extra.get("pixel_mean") or IMAGENET_MEAN, extra.get("pixel_std") or IMAGENET_STD)
    except ValueError as error:
        raise CheckpointError(f"{name} records unusable pixel statistics: {error}") from error


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
