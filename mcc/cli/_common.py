"""Pieces shared by the command-line programs: user errors in one line, data opening, ids, CRF, options."""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from mcc.data import VOCSegmentation
from mcc.data.layout import DatasetRoot
from mcc.training.checkpoint import CheckpointError
from mcc.training.outputs import check_split_files, select_ids

_T = TypeVar("_T")
_MCC_DIR = Path(__file__).resolve().parents[1]
TRACEBACK_ENV = "MCC_TRACEBACK"


class UserError(ValueError):
    """A value the user gave a program (an option, a file, a setting) is unusable.

    Raised by the command-line programs for checks they make themselves after parsing; the message says
    which option or file and why, and :func:`run_cli` prints it as one line. A :class:`ValueError`, so
    Python callers of the programs' ``run`` functions catch it like the library's own input errors.
    """


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of an exception that reports a mistake of the user, or None for a bug.

    User mistakes are:

    * :class:`UserError`, :class:`~mcc.training.CheckpointError` (a file that is no usable
      checkpoint), and an :class:`OSError` about a path (``FileNotFoundError``, ``IsADirectoryError``,
      ``PermissionError``, ...: a file or folder the user named);
    * :class:`ValueError` raised by a ``raise`` statement of this package's own code: the library
      validates its inputs (files, masks, options, settings) and raises ``ValueError`` with a message
      naming the argument, the file or the row. Python's own ``ValueError`` in our code (a failed
      unpacking, ``int("x")``) and one raised inside torch, NumPy or another library are not those
      checks but a bug, and keep their traceback; so does every other
      exception type (``TypeError``, ``RuntimeError``, ``KeyError``, ...);
    * the same errors raised in a ``DataLoader`` worker (torch re-raises them in the main process with
      the worker's traceback in the message);
    * ``torch.OutOfMemoryError``: with a hint to use a smaller batch or crop.

    Set the environment variable ``MCC_TRACEBACK=1`` to get the full traceback of every error.
    """
    if isinstance(error, UserError | CheckpointError):
        return _one_line(str(error))
    if isinstance(error, OSError) and getattr(error, "filename", None) is not None:
        return _one_line(_os_error_text(error))
    if isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError):
        return _one_line(str(error))
    if isinstance(error, torch.OutOfMemoryError):
        first = str(error).splitlines()[0] if str(error) else "out of memory"
        return _one_line(f"{first} (try a smaller --batch-size or --crop-size, or --amp)")
    if isinstance(error, ValueError):
        worker = _worker_error(str(error))
        if worker is not None:
            return worker
        frames = traceback.extract_tb(error.__traceback__)
        # an explicit check of ours (a raise statement in mcc), not Python's own ValueError from our code
        # (a failed unpacking, int("x")), which is a bug
        if frames and _in_package(frames[-1].filename) and (frames[-1].line or "").startswith("raise"):
            return _one_line(str(error))
    return None


def _os_error_text(error: OSError) -> str:
    text = str(error)
    if isinstance(error, FileExistsError):  # makedirs over a file
        return f"{error.filename} exists and is not a folder"
    if text.startswith("[Errno") and error.strerror:  # "[Errno 2] No such file ...: 'x'" from the OS
        return f"{error.strerror}: {error.filename}"
    return text


def _in_package(filename: str) -> bool:
    try:
        Path(filename).resolve().relative_to(_MCC_DIR)
    except (ValueError, OSError):
        return False
    return True


_WORKER_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+', re.MULTILINE)
_USER_TYPES_IN_WORKERS = ("ValueError", "FileNotFoundError", "UserError")


def _worker_error(text: str) -> str | None:
    """The message of a user error raised in a DataLoader worker (None if ``text`` is not one)."""
    if not text.startswith("Caught ") or "Original Traceback (most recent call last):" not in text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    kind, _, message = lines[-1].partition(": ")
    files = _WORKER_FRAME.findall(text)
    if kind.rsplit(".", 1)[-1] not in _USER_TYPES_IN_WORKERS or not files:
        return None
    if kind.endswith("ValueError") and not _in_package(files[-1]):
        return None
    return _one_line(message)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def run_cli(prog: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Calls ``function(*args, **kwargs)``; a user's mistake exits with ``prog: error: <message>``.

    The mistakes :func:`user_error_message` recognises are printed as one line on stderr and end the
    process with exit status 2, as ``argparse`` does for a bad option; warnings are one line each,
    ``prog: warning: <message>``; ``Ctrl-C`` prints
    ``prog: interrupted`` and exits with 130. Anything else (a bug) propagates with its traceback, and so
    does everything when ``MCC_TRACEBACK=1`` is set. Every program of :mod:`mcc.cli` runs its body
    through this function (see :func:`command`), so a new program gets the same behaviour by using it.
    """
    with warnings.catch_warnings():
        warnings.formatwarning = functools.partial(_format_warning, prog)
        return _run_reporting(prog, function, *args, **kwargs)


def _format_warning(prog: str, message, category, filename, lineno, line=None) -> str:
    return f"{prog}: warning: {message}\n"


def _run_reporting(prog: str, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    try:
        return function(*args, **kwargs)
    except KeyboardInterrupt:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        message = None if os.environ.get(TRACEBACK_ENV) else user_error_message(error)
        if message is None:
            raise
        sys.stdout.flush()
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def command(prog: str) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Decorator form of :func:`run_cli` for a program's ``main``: ``@command("mcc-evaluate")``."""

    def decorate(function: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> _T:
            return run_cli(prog, function, *args, **kwargs)

        return wrapper

    return decorate


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer >= 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0."""
    value = _number(text, float)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def unit_float(text: str) -> float:
    """``argparse`` type: a number in [0, 1] (a threshold or a probability)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None


def check_typed_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Applies each option's ``type`` check to values that did not come through it.

    ``argparse`` runs ``type`` on the command line's strings only; defaults set from a ``--config`` file
    (numbers, lists) skip it. A bad value is a :meth:`~argparse.ArgumentParser.error` naming the option.
    """
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.type is None or value is None or not callable(action.type) or action.type in (str, bool):
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if not isinstance(item, str | int | float) or isinstance(item, bool) or item == "":
                continue  # e.g. the (key, value) pairs of --mcc / --vit, made from a mapping
            try:
                action.type(str(item))
            except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
                name = "/".join(action.option_strings) or action.dest
                parser.error(f"argument {name}: {error} (from --config?)")


def device_arg(text: str) -> str:
    """``argparse`` type of ``--device``: a torch device string that this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (expected cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type not in ("cpu", "mps", "xpu"):
        raise argparse.ArgumentTypeError(f"not a supported device: {text!r} (expected cpu, cuda or cuda:N)")
    return text


class ArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose errors are one line on stderr, ``prog: error: message``,
    exit status 2 (argparse's own prints the usage block first). ``prog --help`` shows the options."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the description's line breaks."""


def add_data_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    """``--data-root``, ``--split``, ``--ids``, ``--ground-truth``, ``--max-images``."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-root", required=True, help="dataset root in VOC layout (docs/data.md)")
    group.add_argument("--split", default=split, help="split list under ImageSets/Segmentation")
    group.add_argument(
        "--ids",
        default=None,
        help="only these images: comma-separated ids, or a text file with one id per line",
    )
    group.add_argument(
        "--ground-truth",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the split has masks; auto: no for a split named 'test', yes otherwise",
    )
    group.add_argument("--max-images", type=positive_int, default=None, help="only the first N images")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--amp``, ``--dist-timeout``."""
    group = parser.add_argument_group("run")
    group.add_argument(
        "--device", type=device_arg, default=None, help="cuda, cuda:N or cpu (None: cuda when available)"
    )
    group.add_argument("--amp", action="store_true", help="bf16 autocast of the network (CUDA)")
    group.add_argument(
        "--dist-timeout", type=positive_float, default=1800.0, help="seconds a rank waits in a collective"
    )


def read_ids(text: str) -> list[str]:
    """Ids from ``--ids``: a file with one id per line (first column), or a comma-separated list."""
    path = Path(text)
    if path.is_file():
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


def open_split(args: argparse.Namespace) -> VOCSegmentation:
    """The dataset of ``--data-root``/``--split``, every file checked before any work.

    Raises:
        FileNotFoundError: missing root, split list, images or masks (all missing ids named).
        ValueError: ``--ids`` not in the split.
    """
    masks = args.ground_truth == "yes" or (args.ground_truth == "auto" and args.split != "test")
    root = DatasetRoot(args.data_root, args.split, masks=masks, validate=False)
    if args.ids:
        ids = read_ids(args.ids)
        known = set(root.ids)
        unknown = [i for i in ids if i not in known]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(f"--ids: {len(unknown)} id(s) not in split {args.split!r}: {shown}")
        root.ids = ids  # check only what will be read
    check_split_files(root)
    dataset = VOCSegmentation(args.data_root, args.split, masks=masks, validate=False)
    if args.ids:
        dataset = select_ids(dataset, read_ids(args.ids))
    return dataset


def check_classes(dataset, net, data_root: str) -> None:
    """Refuses a dataset whose classes are not the network's, saying why.

    The checkpoint's recorded class names (``net.class_names``, see
    :func:`~mcc.training.net_from_checkpoint`) are compared with the dataset's: other names give a
    warning on stderr; the same names in another order are refused.

    Raises:
        UserError: the counts differ (when the root has no ``classes.txt``, whose names are then the PASCAL
            VOC defaults, the message says so), or the same classes come in another order.
    """
    count = len(dataset.class_names)
    recorded = getattr(net, "class_names", None)
    if count == net.num_classes + 1:
        names = list(dataset.class_names)
        if recorded and recorded != names:
            message = (
                f"--data-root {data_root} names its classes {names[1:]}, the checkpoint was trained on "
                f"{recorded[1:]}"
            )
            if sorted(recorded) == sorted(names):  # the same classes in another order: wrong indices
                raise UserError(
                    f"{message}: the same classes in another order, so every mask index would mean another "
                    "class; write the checkpoint's order into the root's classes.txt (background first)"
                )
            print(f"warning: {message}; the scores are named after the root's", file=sys.stderr)
        return
    message = (
        f"--data-root {data_root} has {count} classes (background included), the checkpoint's network "
        f"{net.num_classes} + background"
    )
    if not (Path(data_root) / "classes.txt").is_file():
        message += (
            f": the root has no classes.txt, so its names default to the {count} PASCAL VOC classes; "
            f"write the {net.num_classes + 1} class names of the checkpoint's dataset into classes.txt "
            "(background first)"
        )
    raise UserError(message)


def use_net_pixel_stats(dataset, net) -> None:
    """Makes ``dataset`` normalise its images as the network expects (its ``pixel_mean``/``pixel_std``).

    The checkpoint records the statistics of its run (CLIP's for a CLIP or EVA-02 encoder, ImageNet's
    for DeiT and for checkpoints that record none); :func:`~mcc.training.net_from_checkpoint` puts them
    on the network. ``dataset`` is a :class:`~mcc.data.VOCSegmentation`, possibly behind
    :func:`~mcc.training.outputs.select_ids`.
    """
    mean = tuple(net.pixel_mean.flatten().tolist())
    std = tuple(net.pixel_std.flatten().tolist())
    base = dataset
    while not hasattr(base, "mean") and hasattr(base, "dataset"):
        base = base.dataset
    base.mean, base.std = mean, std


def make_crf(device: torch.device):
    """The published dense CRF ``(10, 1, 1, 121, 5, 4)``.

    On CUDA the torch backend on ``device``; on the CPU ``pydensecrf`` (the ``crf`` extra), or the torch
    backend on the CPU when ``pydensecrf`` is not installed.
    """
    from mcc.refine import DenseCRF

    if "backend" not in inspect.signature(DenseCRF).parameters:  # an mcc without the torch backend
        return DenseCRF(10, 1, 1, 121, 5, 4)
    if device.type != "cuda":
        try:
            import pydensecrf.densecrf  # noqa: F401
        except ImportError:
            pass
        else:
            return DenseCRF(10, 1, 1, 121, 5, 4)
    return DenseCRF(10, 1, 1, 121, 5, 4, backend="torch", device=device)


def describe(record_scores: dict, name: str) -> str:
    """``mIoU xx.xx`` of one score of a ``metrics.json`` record."""
    value = record_scores[name]["miou"]
    return "mIoU n/a (no pixels)" if value is None else f"mIoU {value:.2f}"
