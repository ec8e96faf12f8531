"""Results as files: label PNGs, ``metrics.json``, overlay pictures and the VOC test-server archive.

* :func:`save_label_png` / :func:`read_label_png`: class-index maps as palette PNGs (the VOC colour map,
  255 in the light ignore colour (224, 224, 192)); any VOC tool reads the pixel values as class indices.
* :func:`scores_record`: :class:`~mcc.training.SegmentationScores` as JSON-ready percentages by class name.
* :func:`evaluate_to_dir`: :func:`~mcc.training.evaluate` that also writes ``metrics.json``, predictions,
  pictures, or the evaluation server's files for a split without ground truth.
* :func:`check_split_files`, :func:`select_ids`: fail early, naming every bad id or missing file.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import Dataset

from mcc.data.layout import LOOKED_FOR, voc_palette
from mcc.network import MCCNet
from mcc.training.checkpoint import replace_with_default_mode
from mcc.training.evaluation import evaluate
from mcc.training.metrics import SegmentationScores

__all__ = [
    "VOC_TEST_RESULTS",
    "check_split_files",
    "evaluate_to_dir",
    "make_server_archive",
    "read_label_png",
    "save_label_png",
    "scores_record",
    "select_ids",
    "write_json",
]

# Where the PASCAL VOC evaluation server expects segmentation results (competition 6: any training data).
VOC_TEST_RESULTS = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Writes through a temporary file in the same folder, then :func:`os.replace` (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            write(file)
        replace_with_default_mode(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def save_label_png(path: str | os.PathLike, label: np.ndarray | torch.Tensor) -> Path:
    """Writes a class-index map as a palette PNG, atomically.

    Pixel values are the class indices (0 background, 255 ignore); the palette is the VOC colour map,
    so viewers show the usual colours and 255 the light (224, 224, 192).

    Args:
        path: the ``.png`` file; its folder is created when missing.
        label: (H, W) integer class indices in [0, 255].

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``label`` is not 2-D, not integer, or has values outside [0, 255].
    """
    array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if array.ndim != 2:
        raise ValueError(f"label must have shape (H, W), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise ValueError(f"label must hold integer class indices, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label values must lie in [0, 255], got [{array.min()}, {array.max()}]")
    image = Image.fromarray(array.astype(np.uint8))
    image.putpalette(voc_palette())  # an "L" image with a palette becomes "P", pixel values unchanged
    return _atomic_write(Path(path), lambda file: image.save(file, format="PNG"))


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """The class indices of a label PNG (palette or grayscale), shape (H, W), ``uint8``."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette (P) or grayscale (L) PNG, got mode {image.mode!r}")
        return np.array(image, dtype=np.uint8)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Writes ``data`` as indented JSON, atomically (NaN is not JSON: store None instead)."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return _atomic_write(Path(path), lambda file: file.write(text), mode="w")


def _percent(value: float) -> float | None:
    return None if value != value else 100.0 * float(value)  # NaN (no pixels) -> null


def scores_record(
    scores: Mapping[str, SegmentationScores], class_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """JSON-ready scores: for every name ``miou``, ``per_class_iou`` and ``pixel_accuracy``, in percent.

    ``"pseudo_train_coverage"`` (the fraction of pixels the training target labels, see
    :func:`~mcc.training.evaluate`) becomes ``coverage`` of ``"pseudo_train"`` instead of a score of its
    own. A class without ground truth and prediction has no IoU: ``null``.

    Args:
        scores: what :func:`~mcc.training.evaluate` returns.
        class_names: names, background first, one per IoU entry.

    Returns:
        ``{name: {"miou": %, "per_class_iou": {class: %}, "pixel_accuracy": %[, "coverage": %]}}``.
    """
    record: dict[str, dict[str, Any]] = {}
    for name, score in scores.items():
        if name == "pseudo_train_coverage":
            continue
        iou = score.iou.tolist()
        if len(iou) != len(class_names):
            raise ValueError(
                f"class_names has {len(class_names)} names but score {name!r} {len(iou)} classes"
            )
        record[name] = {
            "miou": _percent(score.miou),
            "per_class_iou": {c: _percent(v) for c, v in zip(class_names, iou, strict=True)},
            "pixel_accuracy": _percent(score.pixel_accuracy),
        }
    if "pseudo_train_coverage" in scores and "pseudo_train" in record:
        record["pseudo_train"]["coverage"] = _percent(scores["pseudo_train_coverage"].pixel_accuracy)
    return record


def _listing(values: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def check_split_files(dataset: Dataset) -> None:
    """Checks that every image (and mask, where the split has masks) of a dataset exists.

    For a :class:`~mcc.data.VOCSegmentation` built with ``validate=False`` (or its
    :class:`~mcc.data.layout.DatasetRoot`): the check costs one ``stat`` per file and reports every
    problem at once, before any work.

    Raises:
        FileNotFoundError: names the ids whose image or mask is missing (the first ten and a count).
    """
    data = getattr(dataset, "data", dataset)
    ids = getattr(dataset, "ids", data.ids)  # a subset (select_ids) checks its own ids
    missing_images = [i for i in ids if not data.image_path(i).is_file()]
    missing_masks = []
    if data.mask_dir is not None:
        missing_masks = [i for i in ids if not data.mask_path(i).is_file()]
    problems = []
    if missing_images:
        problems.append(
            f"{len(missing_images)} image(s) missing in {data.image_dir} ({LOOKED_FOR}): "
            f"{_listing(missing_images)}"
        )
    if missing_masks:
        problems.append(f"{len(missing_masks)} mask(s) missing in {data.mask_dir}: {_listing(missing_masks)}")
    if problems:
        raise FileNotFoundError(f"split {data.split!r} of {data.root}: " + "; ".join(problems))


class _IdSubset(Dataset):
    """The samples of ``dataset`` with the given ids, exposing its class names, count and labels."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices
        self.data = dataset.data
        self.ids = [dataset.ids[i] for i in indices]
        self.class_names = dataset.class_names
        self.num_classes = dataset.num_classes
        labels = getattr(dataset, "labels", None)
        self.labels = None if labels is None else labels[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.indices[index]]


def select_ids(dataset: Dataset, ids: Iterable[str]) -> Dataset:
    """The images of ``dataset`` with the given ids, in the given order.

    Args:
        dataset: a dataset with ``ids`` (e.g. :class:`~mcc.data.VOCSegmentation`).
        ids: image ids, each in ``dataset.ids``.

    Raises:
        ValueError: ids not in the dataset's split (names them), repeated ids, or no ids.
    """
    ids = [str(i) for i in ids]
    if not ids:
        raise ValueError("ids: give at least one image id")
    position = {image_id: index for index, image_id in enumerate(dataset.ids)}
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise ValueError(f"ids: {len(unknown)} id(s) not in the split: {_listing(unknown)}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids: an id is repeated")
    return _IdSubset(dataset, [position[i] for i in ids])


def make_server_archive(out_dir: str | os.PathLike, name: str = "results.tar.gz") -> Path:
    """Packs ``out_dir/results/`` (the server layout) into ``out_dir/<name>``, ready to upload.

    Members are ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``, as the PASCAL VOC evaluation
    server expects.

    Raises:
        FileNotFoundError: there is no ``out_dir/results`` folder.
    """
    out_dir = Path(out_dir)
    results = out_dir / "results"
    if not results.is_dir():
        raise FileNotFoundError(f"no results folder to archive: {results}")

    def write(file) -> None:
        with tarfile.open(fileobj=file, mode="w:gz") as archive:
            archive.add(results, arcname="results")

    return _atomic_write(out_dir / name, write)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


PANEL_TITLES = {
    "image": "image",
    "cam": "CAM",
    "cam_par": "CAM+PAR",
    "prediction": "prediction",
    "ground_truth": "ground truth",
}


def _write_overview(
    folder: Path,
    ids: Sequence[str],
    vis_format: str,
    panels: Sequence[str] = ("image",),
    legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
    limit: int = 8,
) -> None:
    """Stacks the first ``limit`` pictures of ``folder`` into ``overview.<vis_format>``: a titled
    column per panel of :data:`PANEL_TITLES` (``panels``: those of the pictures, in order), and below the
    grid the colours of the classes the label panels show (``legend``: ``(name, rgb)`` pairs)."""
    from mcc.visualize import _legend_row, make_grid

    strips = []
    for image_id in ids[:limit]:
        with Image.open(folder / f"{image_id}.{vis_format}") as picture:
            strips.append(picture.convert("RGB"))
    if not strips:
        return
    factor = max(1, -(-128 // min(strip.height for strip in strips)))  # ceil(128 / smallest height)
    count, gap = len(panels), 2  # pipeline_strip's padding between panels
    rows = []
    for strip in strips:
        array = np.asarray(strip)
        width = (array.shape[1] - gap * (count - 1)) // count
        cells = [array[:, i * (width + gap) : i * (width + gap) + width] for i in range(count)]
        rows.append([cell.repeat(factor, axis=0).repeat(factor, axis=1) for cell in cells])
    size = max(11, 6 * factor + 1)
    grid = make_grid(rows, padding=4, titles=[PANEL_TITLES[name] for name in panels], title_size=size)
    if legend:
        grid = np.concatenate([grid, _legend_row(legend, grid.shape[1], 4, size)], axis=0)
    overview = Image.fromarray(grid)
    kind = "JPEG" if vis_format == "jpg" else "PNG"
    _atomic_write(folder / f"overview.{vis_format}", lambda file: overview.save(file, format=kind))


def evaluate_to_dir(
    net: MCCNet,
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    save_pred: bool = False,
    save_vis: int = 0,
    vis_format: str = "jpg",
    checkpoint: str | None = None,
    settings: Mapping[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    **evaluate_kwargs,
) -> dict[str, Any]:
    """:func:`~mcc.training.evaluate` with its results written to ``out_dir``.

    Files:

    * ``metrics.json`` (rank 0, after every rank is done): ``split``, ``num_images``, ``checkpoint``,
      ``settings`` and ``scores`` (:func:`scores_record`); the same numbers the caller prints.
    * with ``save_pred``: ``pred/<id>.png``, the segmentation at the image's own size
      (:func:`save_label_png`).
    * with ``save_vis`` = N: ``vis/<id>.<vis_format>`` for the first N images: image | CAM | CAM+PAR |
      prediction | ground truth (:func:`mcc.visualize.pipeline_strip`; the panels that were computed),
      and ``vis/overview.<vis_format>``, the first (up to) 8 of them in one picture, enlarged (nearest
      neighbour) to at least 128 pixels per row.
    * a dataset without ground truth (VOC ``test``): no scores; the predictions go to
      ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` and rank 0 packs them into
      ``results.tar.gz`` (:func:`make_server_archive`), ready for the evaluation server.

    Under DDP every rank writes the files of its own images (``rank, rank + world_size, ...``).
    Missing images or masks are reported first (:func:`check_split_files`), naming every one.

    Args:
        net: the network.
        dataset: a :class:`~mcc.data.VOCSegmentation`-like dataset (with ``ids``, ``class_names``).
        out_dir: output folder (created).
        save_pred: write the segmentation PNGs.
        save_vis: number of overlay pictures.
        vis_format: ``"jpg"`` or ``"png"``.
        checkpoint: recorded in ``metrics.json``.
        settings: recorded in ``metrics.json`` (scales, flip, CRF, thresholds, ...).
        rank, world_size: this process's share.
        **evaluate_kwargs: passed to :func:`~mcc.training.evaluate` (``device``, ``bkg_thre``, ...).

    Returns:
        the ``metrics.json`` record (on every rank).
    """
    if vis_format not in ("jpg", "png"):
        raise ValueError(f"vis_format must be 'jpg' or 'png', got {vis_format!r}")
    if save_vis < 0:
        raise ValueError(f"save_vis must be >= 0, got {save_vis}")
    out_dir = Path(out_dir)
    if hasattr(dataset, "data"):
        check_split_files(dataset)  # every missing file named before any work
    has_truth = getattr(dataset, "labels", True) is not None
    if not has_truth:
        evaluate_kwargs = dict(evaluate_kwargs, cams=False, pseudo_labels=False, segmentation=True)
    pred_dir = out_dir / ("pred" if has_truth else VOC_TEST_RESULTS)
    write_pred = save_pred or not has_truth
    if write_pred:
        pred_dir.mkdir(parents=True, exist_ok=True)
    if save_vis:
        from mcc.visualize import pipeline_strip, to_pil
    shown: dict[str, Any] = {"panels": ["image"], "classes": set()}  # what the overview's rows hold

    def on_image(index: int, sample: dict, outputs: dict[str, torch.Tensor]) -> None:
        image_id = sample["id"]
        if write_pred and "seg" in outputs:
            save_label_png(pred_dir / f"{image_id}.png", outputs["seg"])
        if index < save_vis:
            cam = outputs.get("cam")
            if cam is not None and "cls_label" in sample:  # only the classes of the image
                cam = cam * sample["cls_label"].to(cam)[:, None, None]
            rgb = net.denormalize(sample["image"].unsqueeze(0).to(next(net.parameters()).device))[0]
            panels = dict(
                cam=cam,
                cam_par=outputs.get("pseudo"),
                prediction=outputs.get("seg"),
                ground_truth=sample.get("mask"),
            )
            strip = pipeline_strip(rgb.clamp(0, 1), **panels)
            if index == 0:
                shown["panels"] = ["image", *(name for name, value in panels.items() if value is not None)]
            if index < 8:  # the overview's images: the classes their label panels colour
                for name in ("cam_par", "prediction", "ground_truth"):
                    if panels[name] is not None and not panels[name].is_floating_point():
                        shown["classes"].update(int(v) for v in torch.unique(panels[name]).tolist())
            path = out_dir / "vis" / f"{image_id}.{vis_format}"
            picture = to_pil(strip)
            _atomic_write(
                path, lambda file: picture.save(file, format="JPEG" if vis_format == "jpg" else "PNG")
            )

    scores = evaluate(net, dataset, rank=rank, world_size=world_size, on_image=on_image, **evaluate_kwargs)
    max_images = evaluate_kwargs.get("max_images")
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    data = getattr(dataset, "data", None)
    record = {
        "split": getattr(data, "split", None),
        "num_images": count,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "settings": dict(settings or {}),
        "scores": scores_record(scores, dataset.class_names),
    }
    if not has_truth:
        record["server_files"] = str(VOC_TEST_RESULTS)
    _barrier()  # every rank's files are written before rank 0 archives and records
    if rank == 0:
        if save_vis:
            ids = [sample_id for sample_id in getattr(dataset, "ids", [])[: min(save_vis, count)]]
            from mcc.visualize import voc_palette as colours

            palette, names = colours(), list(dataset.class_names) + ["ignore"] * 256
            if world_size > 1:  # other ranks drew some of the images: every class
                shown["classes"] = set(range(len(dataset.class_names))) | {255}
            legend = [
                (names[c] if c != 255 else "ignore", tuple(palette[c])) for c in sorted(shown["classes"])
            ]
            _write_overview(out_dir / "vis", ids, vis_format, shown["panels"], legend)
        if not has_truth:
            record["archive"] = make_server_archive(out_dir).name
        write_json(out_dir / "metrics.json", record)
    return record
