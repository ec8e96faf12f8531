"""Masks and tags for any image from a trained :class:`~mcc.MCCNet`, in memory or as files.

* :func:`predict`: a network and images in, one :class:`Prediction` (mask, tag scores) per image out.
  :func:`segment_images` (the masks) and :func:`tag_scores` (the classifier) are its two halves.
* :func:`classification_scores` / :func:`evaluate_tags`: mAP and F1 of the tag predictions against
  image-level labels: what can be scored without masks.
* :func:`find_images`, :func:`check_images`, :func:`predict_to_dir`: the files of ``mcc-predict`` (a
  palette PNG per image at its own size, ``classes.txt``, ``predictions.jsonl``, overlays), resumable
  and shared between torchrun ranks.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mcc.cam.multi_scale import resize_to_patch_multiple
from mcc.data.layout import read_image
from mcc.data.tags import IMAGE_EXTENSIONS
from mcc.data.transforms import normalize
from mcc.network import MCCNet

__all__ = [
    "Prediction",
    "check_images",
    "classification_scores",
    "evaluate_tags",
    "find_images",
    "predict",
    "predict_to_dir",
    "segment_images",
    "tag_scores",
]

RECORDS_FILE = "predictions.jsonl"
SETTINGS_FILE = "settings.json"


@dataclass
class Prediction:
    """What :func:`predict` returns for one image.

    Attributes:
        mask: (H, W) int64 on the CPU at the image's size: 0 background, i the i-th foreground class
            (``class_names[i]`` with background first).
        scores: (C - 1,) float32 on the CPU, the classifier's probability (sigmoid) of each foreground class.
        tags: indices (0-based over the foreground classes) whose score reaches the threshold.
    """

    mask: torch.Tensor
    scores: torch.Tensor
    tags: list[int]

    def pixel_shares(self, num_classes: int) -> np.ndarray:
        """(C,) fraction of the pixels of each class, background first."""
        counts = torch.bincount(self.mask.flatten(), minlength=num_classes)[:num_classes].double()
        return (counts / max(1, self.mask.numel())).numpy()


def _rgb8(net: MCCNet, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 RGB of normalised images, as the evaluation rounds them for the CRF."""
    return (net.denormalize(images) * 255).round().byte()


@torch.no_grad()
def segment_images(
    net: MCCNet,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: Callable | None = None,
) -> torch.Tensor:
    """Class indices (B, H, W) of :meth:`MCCNet.segment`, after ``crf`` on the softmax when given.

    Args:
        net: the network (its mode is left as is: call ``net.eval()`` first).
        images: (B, 3, H, W) normalised with the network's ``pixel_mean``/``pixel_std``.
        scales, flip: as :meth:`MCCNet.segment` (``mcc-evaluate``: 1.0 1.25 1.5 with flip).
        crf: a :class:`~mcc.DenseCRF` (batched through its ``inference`` on the images' device, in float32
            whatever the autocast) or any callable ``(image uint8 (H, W, 3), probs (C, H, W)) -> probs
            (C, H, W)``, given numpy arrays image by image.

    Returns:
        (B, H, W) int64 on the images' device.
    """
    logits = net.segment(images, scales, flip).float()
    if crf is None:
        return logits.argmax(1)
    if hasattr(crf, "inference"):  # a DenseCRF: batched, on the images' device, float32 under any autocast
        with torch.autocast(images.device.type, enabled=False):
            return crf.inference(_rgb8(net, images.float()), logits.softmax(1)).argmax(1)
    rgb8 = _rgb8(net, images)
    probs = logits.softmax(1)
    labels = []
    for rgb, prob in zip(rgb8, probs):
        image = np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy())
        refined = crf(image, prob.cpu().numpy())
        refined = refined if isinstance(refined, torch.Tensor) else torch.from_numpy(np.asarray(refined))
        labels.append(refined.argmax(0).to(images.device))
    return torch.stack(labels)


@torch.no_grad()
def tag_scores(net: MCCNet, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """The classifier's probabilities (B, C - 1): sigmoid of the final classifier on the max-pooled tokens.

    The images are resized to the nearest multiple of the patch size (as for the CAMs); with ``flip``
    the probabilities of the image and its mirror are averaged.
    """
    inputs = resize_to_patch_multiple(images, net.encoder.patch_size)
    if flip:
        inputs = torch.cat([inputs, inputs.flip(-1)])
    logits = net.classifier(F.adaptive_max_pool2d(net.encoder(inputs).patches, 1)).flatten(1).float()
    probs = logits.sigmoid()
    if flip:
        probs = (probs[: len(images)] + probs[len(images) :]) / 2
    return probs


def _as_tensor(net: MCCNet, image: Any) -> torch.Tensor:
    """A (3, H, W) normalised tensor from a path, a PIL image or such a tensor."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must have shape (3, H, W), got {tuple(image.shape)}")
        return image
    if isinstance(image, str | os.PathLike):
        image = read_image(image)
    if isinstance(image, Image.Image):
        mean = tuple(net.pixel_mean.flatten().tolist())
        std = tuple(net.pixel_std.flatten().tolist())
        return normalize(image.convert("RGB"), mean, std)
    raise TypeError(f"an image must be a path, a PIL image or a (3, H, W) tensor, got {type(image).__name__}")


def _batches(items: Sequence[Any], batch_size: int) -> Iterable[list[int]]:
    """Runs of consecutive indices of the same image size, at most ``batch_size`` long."""
    run: list[int] = []
    size = None
    for index, item in enumerate(items):
        item_size = tuple(item.shape[-2:])
        if run and (item_size != size or len(run) == batch_size):
            yield run
            run = []
        run.append(index)
        size = item_size
    if run:
        yield run


@torch.no_grad()
def predict(
    net: MCCNet,
    images: torch.Tensor | Sequence[Any],
    *,
    scales: Sequence[float] = (1.0, 1.25, 1.5),
    flip: bool = True,
    crf: Callable | None = None,
    tag_threshold: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[Prediction]:
    """Masks and tag scores of images: the call the prediction command, evaluation and users share.

    The mask is the evaluation's segmentation (``mcc-evaluate``'s ``seg`` and its ``--save-pred`` PNGs):
    :meth:`MCCNet.segment` at ``scales`` with ``flip``, the argmax over background and the classes,
    optionally after ``crf``. The tag scores are :func:`tag_scores` (the image at its own size, with
    ``flip``); a class is a predicted tag when its score reaches ``tag_threshold``.

    Args:
        net: a trained network (put in eval mode for the call, its mode restored after).
        images: a (B, 3, H, W) tensor or a sequence of (3, H, W) tensors, normalised with the network's
            ``pixel_mean``/``pixel_std``; or of PIL images or image paths (normalised here).
        scales: segmentation scales (default ``mcc-evaluate``'s 1.0 1.25 1.5).
        flip: add horizontal flips.
        crf: see :func:`segment_images`.
        tag_threshold: probability from which a class counts as present.
        batch_size: images per forward pass; consecutive images of the same size are batched.
        device: where the network runs (default: where its parameters are).
        autocast_dtype: CUDA autocast dtype (e.g. ``torch.bfloat16``).

    Returns:
        one :class:`Prediction` per image, in order.

    Raises:
        ValueError: bad ``scales``, ``batch_size`` or ``tag_threshold``, or an image of the wrong shape.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= tag_threshold <= 1.0:
        raise ValueError(f"tag_threshold must be in [0, 1], got {tag_threshold}")
    if len(scales) == 0 or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of factors > 0, got {tuple(scales)}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        items = list(images)
    else:
        items = [_as_tensor(net, image) for image in images]
    use_autocast = autocast_dtype is not None and device.type == "cuda"
    results: list[Prediction | None] = [None] * len(items)
    was_training = net.training
    net.eval()
    try:
        for run in _batches(items, batch_size):
            batch = torch.stack([items[i] for i in run]).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast):
                masks = segment_images(net, batch, scales, flip, crf)
                probs = tag_scores(net, batch, flip)
            for i, mask, prob in zip(run, masks.cpu(), probs.float().cpu()):
                tags = (prob >= tag_threshold).nonzero().flatten().tolist()
                results[i] = Prediction(mask=mask.long(), scores=prob, tags=tags)
    finally:
        net.train(was_training)
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------
# Classification scores without masks


def _average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Non-interpolated AP of one class: mean precision at the rank of each positive (ties: worst order)."""
    positives = truth.sum()
    if positives == 0:
        return float("nan")
    order = np.lexsort((truth, -scores))  # by score, descending; among equal scores negatives first
    hits = truth[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / positives)


def classification_scores(
    scores: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """mAP and F1 of multi-label tag predictions, in percent.

    * ``map``: mean over the classes with at least one positive image of the average precision (the
      mean precision at the rank of each positive image, images ordered by score);
    * ``f1``: micro-averaged F1 of the tags ``score >= threshold`` over all (image, class) pairs;
      ``precision``, ``recall`` likewise; ``per_class``: ``{name: {"ap", "f1"}}`` (``null`` where a class
      has no positive image, for AP, or no positive and no predicted one, for F1).

    Args:
        scores: (N, K) probabilities.
        labels: (N, K) multi-hot truth.
        class_names: K foreground names (default ``class_1...``), or K + 1 with background first.
        threshold: the tag threshold.
    """
    scores = np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels) > 0.5
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, K)")
    k = scores.shape[1]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(1, k + 1)]
    if len(names) == k + 1:
        names = names[1:]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    predicted = scores >= threshold
    per_class = {}
    aps = []
    for j, name in enumerate(names):
        ap = _average_precision(scores[:, j], labels[:, j].astype(np.float64))
        tp = int((predicted[:, j] & labels[:, j]).sum())
        denominator = int(predicted[:, j].sum() + labels[:, j].sum())
        f1 = 2 * tp / denominator if denominator else float("nan")
        per_class[name] = {"ap": None if ap != ap else 100 * ap, "f1": None if f1 != f1 else 100 * f1}
        if ap == ap:
            aps.append(ap)
    tp = int((predicted & labels).sum())
    n_pred, n_true = int(predicted.sum()), int(labels.sum())
    precision = tp / n_pred if n_pred else float("nan")
    recall = tp / n_true if n_true else float("nan")
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else float("nan")

    def percent(value: float) -> float | None:
        return None if value != value else 100 * value

    return {
        "num_images": int(scores.shape[0]),
        "threshold": threshold,
        "map": percent(float(np.mean(aps))) if aps else None,
        "f1": percent(f1),
        "precision": percent(precision),
        "recall": percent(recall),
        "per_class": per_class,
    }


@torch.no_grad()
def evaluate_tags(
    net: MCCNet,
    dataset,
    *,
    device: torch.device | str = "cpu",
    flip: bool = False,
    threshold: float = 0.5,
    max_images: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """:func:`classification_scores` of :func:`tag_scores` on a dataset of tagged images.

    Args:
        net: the network (eval mode for the call).
        dataset: samples with ``image`` (3, H, W) normalised as ``net`` expects and ``cls_label``
            (e.g. :class:`~mcc.data.TagImages`, :class:`~mcc.data.VOCSegmentation`).
        device, flip, threshold: where the network runs, mirrored images, the tag threshold.
        max_images: only the first N images.
        rank, world_size: under DDP each rank takes images ``rank, rank + world_size, ...``; the scores
            are all-reduced, so every rank returns the same record.
        autocast_dtype: CUDA autocast dtype.
    """
    device = torch.device(device)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    k = net.num_classes
    scores = torch.zeros(count, k, dtype=torch.float64, device=device)
    labels = torch.zeros(count, k, dtype=torch.float64, device=device)
    use_autocast = autocast_dtype is not None and device.type == "cuda"
    was_training = net.training
    net.eval()
    try:
        for index in range(rank, count, world_size):
            sample = dataset[index]
            image = sample["image"].unsqueeze(0).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=use_autocast):
                scores[index] = tag_scores(net, image, flip)[0].double()
            labels[index] = sample["cls_label"].to(device).double()
    finally:
        net.train(was_training)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(scores)
        dist.all_reduce(labels)
    return classification_scores(
        scores.cpu().numpy(), labels.cpu().numpy(), getattr(dataset, "class_names", None), threshold
    )


# ---------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class InputImage:
    """An image file to predict and the name of its outputs (relative, POSIX, without extension)."""

    path: Path
    name: str


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _walk(folder: Path, exclude: Path | None) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(folder):
        here = Path(directory)
        if exclude is not None and (here == exclude or exclude in here.parents):
            subdirs[:] = []
            continue
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(here / f for f in sorted(files) if _is_image_name(here / f))
    return found


def find_images(
    inputs: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None
) -> list[InputImage]:
    """The image files of ``mcc-predict``'s inputs, each with the name of its outputs.

    An input is an image file (name: its file name without extension), a folder searched recursively
    for files with an image extension (:data:`~mcc.data.tags.IMAGE_EXTENSIONS`, hidden ones skipped;
    name: the path relative to the folder) or a glob pattern (its matches taken as files or folders,
    named relative to the pattern's fixed leading folder). Files under ``exclude`` (the output folder)
    are left out.

    Raises:
        FileNotFoundError: an input that is neither a file, a folder nor a pattern with matches.
        ValueError: two images whose outputs would have the same name (both named), or no image at all.
    """
    exclude_path = Path(exclude).resolve() if exclude is not None else None
    found: list[InputImage] = []
    for text in inputs:
        text = str(text)
        path = Path(text)
        if path.is_file():
            found.append(InputImage(path, path.with_suffix("").name))
        elif path.is_dir():
            for file in _walk(path.resolve(), exclude_path):
                found.append(InputImage(path / file.relative_to(path.resolve()), _name(file, path.resolve())))
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"input {text!r}: the pattern matches no file")
            base = _glob_base(text)
            for match in map(Path, matches):
                if match.is_dir():
                    for file in _walk(match.resolve(), exclude_path):
                        found.append(InputImage(file, _name(file, base.resolve())))
                elif _is_image_name(match) and not _excluded(match, exclude_path):
                    found.append(InputImage(match, _name(match.resolve(), base.resolve())))
        else:
            raise FileNotFoundError(f"input not found: {text}")
    if not found:
        raise ValueError(f"no image files in the inputs {list(map(str, inputs))}")
    by_name: dict[str, Path] = {}
    seen: set[Path] = set()
    clashes = []
    unique = []
    for item in found:
        resolved = item.path.resolve()
        if resolved in seen:
            continue  # the same file given twice (e.g. a folder and a glob inside it): its first name
        seen.add(resolved)
        earlier = by_name.get(item.name)
        if earlier is not None:
            clashes.append(f"{earlier} and {item.path} -> {item.name}.png")
            continue
        by_name[item.name] = item.path
        unique.append(item)
    if clashes:
        shown = "; ".join(clashes[:5]) + (f"; and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise ValueError(f"{len(clashes)} output name(s) would be written twice: {shown}")
    return unique


def _excluded(path: Path, exclude: Path | None) -> bool:
    return exclude is not None and exclude in path.resolve().parents


def _name(file: Path, base: Path) -> str:
    try:
        relative = file.relative_to(base)
    except ValueError:
        relative = Path(file.name)
    return relative.with_suffix("").as_posix()


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def check_images(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, str]]:
    """The files that are not readable images, each with the reason (empty when all are fine).

    Opens every file and checks its header and structure (``PIL.Image.verify``); a file truncated in
    its pixel data is only found when it is decoded (then :func:`predict_to_dir` names it).
    """
    bad = []
    for path in map(Path, paths):
        try:
            with Image.open(path) as image:
                image.verify()
        except FileNotFoundError:
            bad.append((path, "file not found"))
        except Exception as error:  # noqa: BLE001 - PIL raises many kinds for a bad file
            bad.append((path, f"not a readable image ({type(error).__name__}: {error})"))
    return bad


def _atomic_bytes(path: Path, data: bytes) -> None:
    from mcc.training.outputs import _atomic_write

    _atomic_write(path, lambda file: file.write(data))


def _record(item: InputImage, image_size, prediction: Prediction, class_names: Sequence[str]) -> dict:
    foreground = class_names[1:]
    shares = prediction.pixel_shares(len(class_names))
    return {
        "image": item.name,
        "file": str(item.path),
        "width": image_size[0],
        "height": image_size[1],
        "tags": [foreground[i] for i in prediction.tags],
        "scores": {name: round(float(s), 6) for name, s in zip(foreground, prediction.scores.tolist())},
        "pixels": {name: round(float(s), 6) for name, s in zip(class_names, shares)},
    }


def _read_records(path: Path) -> dict[str, dict]:
    """Records of a JSON-lines file by image name; a torn last line (a killed run) is ignored."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "image" in record:
            records[record["image"]] = record
    return records


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def predict_to_dir(
    net: MCCNet,
    images: Sequence[InputImage],
    out_dir: str | os.PathLike,
    class_names: Sequence[str],
    *,
    overlay: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool | None = None,
    settings: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    **predict_kwargs,
) -> dict[str, Any]:
    """Predicts every image and writes its files (``mcc-predict``); resumes where a killed run stopped.

    Files in ``out_dir``:

    * ``<name>.png``: the mask at the image's size, a palette PNG (0 background, i = ``class_names[i]``);
    * ``classes.txt``: ``class_names``, background first, one per line;
    * ``predictions.jsonl``: one record per image, in input order: ``image`` (the name), ``file``,
      ``width``, ``height``, ``tags`` (predicted), ``scores`` (per class) and ``pixels`` (each class's
      share of the mask, background included);
    * with ``overlay``: ``overlays/<name>.jpg``, the image blended with its mask;
    * ``settings.json``: what the outputs depend on (checkpoint, scales, flip, CRF, threshold).

    Every file is written atomically. An image whose PNG (and overlay) exists and whose record is known
    is skipped unless ``overwrite``; resuming with other settings raises
    :class:`~mcc.training.pseudo_labels.SettingsMismatchError` unless ``overwrite``. Under torchrun
    each rank takes images ``rank, rank + world_size, ...``, writes its records to
    ``.records/rank<r>.jsonl``, and rank 0 gathers them into ``predictions.jsonl`` at the end.

    Args:
        net: the trained network.
        images: from :func:`find_images`.
        out_dir: the output folder (created).
        class_names: background first, ``net.num_classes + 1`` names.
        overlay, overwrite: see above.
        skip_bad: an image that fails to decode is listed in the result's ``bad`` and skipped; without it
            the ``ValueError`` naming the file propagates (files done so far are kept).
        num_workers: processes that decode the images while the network runs (0: in this process).
        rank, world_size: this process's share.
        progress: a tqdm bar on rank 0 (default: when stderr is a terminal).
        settings: recorded in ``settings.json`` (e.g. ``checkpoint``).
        log: called on rank 0 with a line naming the skipped bad files, if any (None: not called).
        **predict_kwargs: :func:`predict`'s ``scales``, ``flip``, ``crf``, ``tag_threshold``,
            ``batch_size``, ``device``, ``autocast_dtype``.

    Returns:
        ``{"num_images", "written", "skipped", "bad": [[file, reason], ...]}`` over all ranks.
    """
    from mcc.training.outputs import save_label_png, write_json
    from mcc.training.pseudo_labels import _check_same_settings

    class_names = list(class_names)
    if len(class_names) != net.num_classes + 1:
        raise ValueError(
            f"class_names has {len(class_names)} names (background first), the network {net.num_classes} + 1"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    crf = predict_kwargs.get("crf")
    identity = {
        "scales": list(predict_kwargs.get("scales", (1.0, 1.25, 1.5))),
        "flip": predict_kwargs.get("flip", True),
        "crf": repr(crf) if crf is not None else None,
        "tag_threshold": predict_kwargs.get("tag_threshold", 0.5),
        "class_names": class_names,
        **{k: v for k, v in (settings or {}).items() if k == "checkpoint"},
    }
    _check_same_settings(out_dir / SETTINGS_FILE, identity, overwrite)
    if rank == 0:
        write_json(out_dir / SETTINGS_FILE, identity)
        _atomic_bytes(out_dir / "classes.txt", ("\n".join(class_names) + "\n").encode())
    known = {} if overwrite else _read_records(out_dir / RECORDS_FILE)
    parts_dir = out_dir / ".records"
    if not overwrite and parts_dir.is_dir():
        for part in sorted(parts_dir.glob("rank*.jsonl")):
            known.update(_read_records(part))
    parts_dir.mkdir(exist_ok=True)
    own = images[rank::world_size]
    part_path = parts_dir / f"rank{rank}.jsonl"
    if overwrite or not part_path.exists():
        part_path.write_text("")
    counts = torch.zeros(2, dtype=torch.int64)  # written, skipped
    bad: list[tuple[str, str]] = []
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress and rank == 0:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(own), desc="predict", unit="image", leave=False)
        except ImportError:
            bar = None
    batch_size = predict_kwargs.get("batch_size", 1)

    def done(item: InputImage) -> bool:
        if overwrite or item.name not in known or not (out_dir / f"{item.name}.png").is_file():
            return False
        return not overlay or (out_dir / "overlays" / f"{item.name}.jpg").is_file()

    with part_path.open("a", encoding="utf-8") as part:
        if part.tell() and not part_path.read_bytes().endswith(b"\n"):
            part.write("\n")  # a torn last line of a killed run stays apart from the new records
        pending: list[tuple[InputImage, Image.Image]] = []

        def flush() -> None:
            if not pending:
                return
            predictions = predict(net, [image for _, image in pending], **predict_kwargs)
            for (item, image), prediction in zip(pending, predictions):
                save_label_png(out_dir / f"{item.name}.png", prediction.mask)
                if overlay:
                    _write_overlay(out_dir / "overlays" / f"{item.name}.jpg", image, prediction.mask)
                record = _record(item, image.size, prediction, class_names)
                part.write(json.dumps(record) + "\n")
                part.flush()
                known[item.name] = record
                counts[0] += 1
            if bar is not None:
                bar.update(len(pending))
            pending.clear()

        todo = []
        for item in own:
            if done(item):
                counts[1] += 1
                if bar is not None:
                    bar.update(1)
            else:
                todo.append(item)
        decoded = _Decoded(todo)
        if num_workers:  # decoding in worker processes while the network runs
            from torch.utils.data import DataLoader

            samples = DataLoader(decoded, batch_size=None, num_workers=num_workers)
        else:
            samples = (decoded[i] for i in range(len(decoded)))
        for index, pixels, error in samples:
            item = todo[int(index)]
            if error:
                if not skip_bad:
                    raise ValueError(error)
                bad.append((str(item.path), error))
                if bar is not None:
                    bar.update(1)
                continue
            pending.append((item, Image.fromarray(np.asarray(pixels))))
            if len(pending) >= batch_size:
                flush()
        flush()
    if bar is not None:
        bar.close()

    bad_all = bad
    if _distributed():
        import torch.distributed as dist

        backend_device = (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        )
        moved = counts.to(backend_device) if backend_device is not None else counts
        dist.all_reduce(moved)
        counts = moved.cpu()
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, bad)
        bad_all = [entry for part_bad in gathered for entry in part_bad]
        dist.barrier()
    if rank == 0:
        records = _read_records(out_dir / RECORDS_FILE) if not overwrite else {}
        for part_file in sorted(parts_dir.glob("rank*.jsonl")):
            records.update(_read_records(part_file))
        lines = [json.dumps(records[item.name]) for item in images if item.name in records]
        _atomic_bytes(out_dir / RECORDS_FILE, ("\n".join(lines) + ("\n" if lines else "")).encode())
        for part_file in parts_dir.glob("rank*.jsonl"):
            part_file.unlink(missing_ok=True)
        try:
            parts_dir.rmdir()
        except OSError:
            pass
    if _distributed():
        import torch.distributed as dist

        dist.barrier()
    if bad_all and rank == 0 and log is not None:
        log(f"skipped {len(bad_all)} unreadable image(s): " + "; ".join(f"{p} ({r})" for p, r in bad_all))
    return {
        "num_images": len(images),
        "written": int(counts[0]),
        "skipped": int(counts[1]),
        "bad": [list(entry) for entry in bad_all],
    }


class _Decoded(torch.utils.data.Dataset):
    """``(index, (H, W, 3) uint8 pixels or None, error message or "")`` of each image: decoding errors are
    returned, not raised, so that a worker process hands them back whole."""

    def __init__(self, items: Sequence[InputImage]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            return index, np.asarray(read_image(self.items[index].path)), ""
        except (FileNotFoundError, ValueError) as error:
            return index, None, str(error)


def _write_overlay(path: Path, image: Image.Image, mask: torch.Tensor, alpha: float = 0.5) -> None:
    from mcc.training.outputs import _atomic_write
    from mcc.visualize import overlay_label

    picture = Image.fromarray(overlay_label(np.asarray(image), mask.numpy(), alpha=alpha))
    _atomic_write(path, lambda file: picture.save(file, format="JPEG", quality=90))
