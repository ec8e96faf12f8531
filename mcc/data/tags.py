"""Image-level labels without masks: tag files, image paths, and the datasets that train and score on them.

Weak supervision needs one thing per training image: which classes it shows. This module reads that
from the files people have, resolves the image files, checks everything before any work, and gives the
datasets :func:`mcc.training.train` takes:

* :func:`read_tags` (one entry point; the source is told from the file): a CSV, long form (columns
  ``image`` and ``labels``, the labels of a row separated by ``;``, empty = no foreground class) or
  wide form (``image`` plus one 0/1 column per class); a JSON mapping ``{"<image>": ["cat", ...]}``;
  the published ``cls_labels_onehot.npy`` (a pickled dict id -> multi-hot over the VOC classes); a
  folder of VOC XML annotations (``Annotations/<id>.xml``, every ``<object><name>``, difficult ones
  included); a COCO instances JSON (the categories present in each image, read with pycocotools).
* :func:`tags_from_mapping`: the same from labels already held in Python.
* :class:`ImageTags`: what they return: image files, multi-hot labels, class names.
* :class:`TagTrainViews`: the MCC training views of those images, the same tensors
  :class:`~mcc.data.VOCTrainViews` gives for the same image, label and seed.
* :class:`TagImages`: whole images with their labels (classification scores of a tags-only split).

Image entries are paths relative to the images folder (sub-folders allowed). An entry with an image
extension names the file; one without is resolved as ``<entry>.jpg``, ``.jpeg`` or ``.png``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mcc.data.datasets import TrainViews
from mcc.data.layout import IGNORE_INDEX, IMAGE_SUFFIXES, VOC_CLASSES, read_image
from mcc.data.strong_view import StrongAugment
from mcc.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PhotometricAugment, normalize, pixel_stats

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageTags",
    "TagImages",
    "TagTrainViews",
    "read_classes_file",
    "read_tags",
    "resolve_image",
    "tags_from_mapping",
]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the extensions a VOC-layout root accepts too (any letter case)
_RESOLVED_EXTENSIONS = (".jpg", ".jpeg", ".png")
_LIST_LIMIT = 10


@dataclass
class _Entry:
    """One image's tags as a file states them, with where it says so (for error messages)."""

    image: str
    tags: tuple[str, ...]
    where: str


@dataclass
class ImageTags:
    """Image-level labels of a set of images.

    Attributes:
        paths: the image files, one per image.
        ids: the image entries relative to the images folder, without extension (``"cats/img_01"``).
        labels: (N, C - 1) float32 multi-hot over the foreground classes, row i for ``paths[i]``.
        class_names: the class names, background first (``len = C``), the order of the label columns.
        source: the label file (or a description of the in-memory source).
    """

    paths: list[Path]
    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def foreground_classes(self) -> list[str]:
        """The class names without background."""
        return self.class_names[1:]

    def subset(self, ids: Iterable[str]) -> ImageTags:
        """The images with the given ids (as in :attr:`ids`), in that order.

        Raises:
            ValueError: an id that is not one of these images (names them).
        """
        position = {image_id: index for index, image_id in enumerate(self.ids)}
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise ValueError(f"{len(unknown)} id(s) not in {self.source}: {_listing(unknown)}")
        rows = [position[i] for i in ids]
        return ImageTags(
            [self.paths[r] for r in rows], ids, self.labels[rows], list(self.class_names), self.source
        )


def _listing(values: Sequence[str], limit: int = _LIST_LIMIT) -> str:
    shown = "; ".join(str(v) for v in values[:limit])
    return shown + (f"; and {len(values) - limit} more" if len(values) > limit else "")


# ---------------------------------------------------------------------------------------------------
# Class names


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """Foreground class names, one per line, in order; a first line ``background`` is skipped.

    Returns:
        the names, background first (``["background", *foreground]``).
    Raises:
        FileNotFoundError: no such file.
        ValueError: no foreground name, a duplicate, a name with ``;`` or more than 254 classes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read classes file {path}: {error}") from error
    names = [line.strip() for line in lines if line.strip()]
    if names and names[0].lower() == "background":
        names = names[1:]
    return ["background", *_check_names(names, str(path))]


def _check_names(names: Sequence[str], where: str) -> list[str]:
    names = [str(n) for n in names]
    if not names:
        raise ValueError(f"{where}: no foreground class names")
    if len(names) >= IGNORE_INDEX:
        raise ValueError(f"{where}: at most {IGNORE_INDEX - 1} foreground classes fit an 8-bit mask")
    seen: dict[str, int] = {}
    for line, name in enumerate(names, 1):
        if ";" in name:
            raise ValueError(f"{where}: class name {name!r} contains ';' (the tag separator)")
        if name.lower() == "background":
            raise ValueError(f"{where}: 'background' is class 0 and may only come first")
        if name in seen:
            raise ValueError(f"{where}: class {name!r} is listed twice")
        seen[name] = line
    return names


# ---------------------------------------------------------------------------------------------------
# Image paths


def resolve_image(images: str | os.PathLike, entry: str) -> Path | None:
    """The image file an entry names: ``images/entry`` if it has an image extension, else the first of
    ``entry.jpg``, ``entry.jpeg``, ``entry.png`` (any letter case) that exists; None when none does."""
    base = Path(images)
    path = base / entry
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return path if path.is_file() else None
    for suffix in _RESOLVED_EXTENSIONS:
        for candidate in (suffix, suffix.upper()):
            found = path.with_name(path.name + candidate)
            if found.is_file():
                return found
    return path if path.suffix and path.is_file() else None


def _entry_id(entry: str) -> str:
    path = Path(entry.replace("\\", "/"))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        path = path.with_suffix("")
    return path.as_posix()


# ---------------------------------------------------------------------------------------------------
# Readers of each source: entries (image, tags, where) and, where the source fixes them, class names


def _read_csv(path: Path) -> list[_Entry]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read label file {path}: {error}") from error
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: empty file (header image,labels or image,<class>,... expected)") from None
    except csv.Error as error:
        raise ValueError(f"{path} row 1: not valid CSV: {error}") from error
    header = [h.strip() for h in header]
    lowered = [h.lower() for h in header]
    if "image" not in lowered:
        raise ValueError(f"{path} row 1: the header {header} has no 'image' column")
    image_col = lowered.index("image")
    long_form = len(header) == 2 and "labels" in lowered
    entries: list[_Entry] = []
    if long_form:
        labels_col = lowered.index("labels")
    else:
        class_cols = [i for i in range(len(header)) if i != image_col]
        if not class_cols:
            raise ValueError(f"{path} row 1: the header names no classes (long form: image,labels)")
        _check_names([header[i] for i in class_cols], f"{path} row 1")
    try:
        for row in reader:
            where = f"{path} row {reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} fields, the header has {len(header)}")
            image = row[image_col].strip()
            if not image:
                raise ValueError(f"{where}: empty image name")
            if long_form:
                field = row[labels_col].strip()
                tags = tuple(t.strip() for t in field.split(";")) if field else ()
                empty = [t for t in tags if not t]
                if empty:
                    raise ValueError(f"{where}: empty tag in {field!r} (tags are separated by ';')")
            else:
                tags = []
                for i in class_cols:
                    value = row[i].strip()
                    if value not in ("0", "1"):
                        raise ValueError(f"{where}: column {header[i]!r} holds {value!r}, expected 0 or 1")
                    if value == "1":
                        tags.append(header[i])
                tags = tuple(tags)
            entries.append(_Entry(image, tags, where))
    except csv.Error as error:
        raise ValueError(f"{path} row {reader.line_num}: not valid CSV: {error}") from error
    return entries


def _csv_classes(path: Path) -> list[str] | None:
    """The class columns of a wide-form CSV (its header fixes the order), else None."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        header = [h.strip() for h in next(csv.reader(file), [])]
    lowered = [h.lower() for h in header]
    if "image" not in lowered or (len(header) == 2 and "labels" in lowered):
        return None
    return [h for i, h in enumerate(header) if i != lowered.index("image")]


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read label file {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON: {error.msg}") from error


def _is_coco(data) -> bool:
    return isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data)


def _read_json_mapping(path: Path, data) -> list[_Entry]:
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f'{path}: expected an object {{"<image>": ["<class>", ...]}}, got a JSON {kind}')
    entries = []
    for image, tags in data.items():
        where = f"{path} entry {image!r}"
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}: expected a list of class names, got {json.dumps(tags)[:80]}")
        entries.append(_Entry(str(image), tuple(t.strip() for t in tags), where))
    return entries


def _read_coco(path: Path) -> tuple[list[_Entry], list[str]]:
    """Entries of every annotated image of a COCO instances file, and the categories in id order."""
    try:
        from pycocotools.coco import COCO
    except ImportError as error:
        raise ValueError(
            f"{path} is a COCO instances file: reading it needs pycocotools (pip install pycocotools)"
        ) from error
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(path))
    except Exception as error:  # noqa: BLE001 - pycocotools raises AssertionError, KeyError, ... by fault
        raise ValueError(f"cannot read COCO annotations {path}: {type(error).__name__}: {error}") from error
    categories = sorted(coco.cats)
    names = [str(coco.cats[c]["name"]) for c in categories]
    entries = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        annotations = coco.imgToAnns.get(image_id, [])
        if not annotations:
            continue  # as the published COCO training lists: images without any instance are left out
        present = {a["category_id"] for a in annotations}
        unknown = sorted(present - set(coco.cats))
        if unknown:
            raise ValueError(f"{path} image {image_id}: annotations of unknown category ids {unknown}")
        tags = tuple(coco.cats[c]["name"] for c in categories if c in present)
        entries.append(_Entry(str(info["file_name"]), tags, f"{path} image id {image_id}"))
    return entries, names


def _read_onehot(path: Path, class_names: Sequence[str]) -> list[_Entry]:
    try:
        data = np.load(path, allow_pickle=True)  # the published file is a pickled dict (trusted input)
        if isinstance(data, np.ndarray) and data.dtype == object and data.ndim == 0:
            data = data.item()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot read label file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict id -> multi-hot vector (cls_labels_onehot.npy)")
    foreground = list(class_names[1:])
    entries = []
    for image_id, vector in data.items():
        where = f"{path} entry {image_id!r}"
        values = np.asarray(vector).reshape(-1)
        if values.size != len(foreground):
            raise ValueError(
                f"{where}: {values.size} labels, but there are {len(foreground)} classes "
                "(VOC's 20 unless --classes / class_names say otherwise)"
            )
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{where}: values {np.unique(values).tolist()}, expected 0 or 1")
        tags = tuple(name for name, value in zip(foreground, values) if value == 1)
        entries.append(_Entry(str(image_id), tags, where))
    return entries


def _read_voc_xml(folder: Path) -> list[_Entry]:
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise ValueError(f"{folder}: no .xml annotation files (expected VOC Annotations/<id>.xml)")
    entries = []
    for file in files:
        try:
            root = ElementTree.parse(file).getroot()
        except (ElementTree.ParseError, OSError) as error:
            raise ValueError(f"cannot read annotation {file}: {error}") from error
        names = []
        for number, obj in enumerate(root.iter("object"), 1):
            name = obj.findtext("name")
            if name is None or not name.strip():
                raise ValueError(f"{file} object {number}: no <name>")
            names.append(name.strip())
        tags = tuple(dict.fromkeys(names))  # difficult objects included, each class once
        entries.append(_Entry(file.stem, tags, str(file)))
    return entries


# ---------------------------------------------------------------------------------------------------
# From entries to ImageTags


def _infer_classes(entries: Sequence[_Entry], source: str) -> list[str]:
    names = sorted({tag for entry in entries for tag in entry.tags})
    if not names:
        raise ValueError(f"{source}: no image has a tag, so there are no classes (give --classes)")
    warnings.warn(
        f"{source}: no class list given; using the {len(names)} tag names found, sorted: "
        f"{', '.join(names[:20])}{' ...' if len(names) > 20 else ''}. The order is inferred: give a "
        "classes file (one name per line) to fix it",
        UserWarning,
        stacklevel=3,
    )
    return ["background", *_check_names(names, source)]


def _build(
    entries: Sequence[_Entry],
    images: str | os.PathLike,
    class_names: Sequence[str],
    source: str,
    ids: Sequence[str] | None,
) -> ImageTags:
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    index = {name: i for i, name in enumerate(class_names[1:])}
    allowed = ", ".join(class_names[1:21]) + (" ..." if len(class_names) > 21 else "")
    first: dict[str, _Entry] = {}
    order: list[_Entry] = []
    for entry in entries:
        for tag in entry.tags:
            if tag not in index:
                raise ValueError(
                    f"{entry.where}: tag {tag!r} is not one of the {len(index)} classes ({allowed})"
                )
        key = _entry_id(entry.image)
        earlier = first.get(key)
        if earlier is not None:
            if set(earlier.tags) != set(entry.tags):
                raise ValueError(
                    f"{entry.where}: image {entry.image!r} is listed again with other tags "
                    f"({';'.join(entry.tags) or 'none'}) than at {earlier.where} "
                    f"({';'.join(earlier.tags) or 'none'})"
                )
            continue
        first[key] = entry
        order.append(entry)
    if ids is not None:
        wanted = [str(i) for i in ids]
        unknown = [i for i in wanted if _entry_id(i) not in first]
        if unknown:
            raise ValueError(f"{len(unknown)} id(s) have no labels in {source}: {_listing(unknown)}")
        order = [first[_entry_id(i)] for i in dict.fromkeys(wanted)]
    if not order:
        raise ValueError(f"{source}: no images")
    paths, missing = [], []
    for entry in order:
        path = resolve_image(images, entry.image)
        if path is None:
            tried = (
                entry.image
                if Path(entry.image).suffix.lower() in IMAGE_EXTENSIONS
                else (f"{entry.image}.jpg/.jpeg/.png")
            )
            missing.append(f"{entry.where}: {tried}")
        paths.append(path)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) listed in {source} not found under {images}: {_listing(missing)}"
        )
    labels = np.zeros((len(order), len(index)), dtype=np.float32)
    for row, entry in enumerate(order):
        for tag in entry.tags:
            labels[row, index[tag]] = 1.0
    return ImageTags(paths, [_entry_id(e.image) for e in order], labels, list(class_names), source)


def _resolve_classes(classes, fixed: list[str] | None, entries, source: str) -> list[str]:
    """The class names: ``classes`` (a file or foreground names), else the source's, else inferred."""
    if classes is not None:
        if isinstance(classes, str | os.PathLike):
            return read_classes_file(classes)
        names = list(classes)
        if names and str(names[0]).lower() == "background":
            names = names[1:]
        return ["background", *_check_names(names, "classes")]
    if fixed is not None:
        return ["background", *_check_names(fixed, source)]
    return _infer_classes(entries, source)


def read_tags(
    labels: str | os.PathLike,
    images: str | os.PathLike,
    classes: str | os.PathLike | Sequence[str] | None = None,
    *,
    ids: Sequence[str] | None = None,
) -> ImageTags:
    """Reads image-level labels from any supported source and resolves their images (module docstring).

    The source is told from ``labels``: a folder (of VOC ``.xml`` files; a VOC root's ``Annotations``),
    ``.csv``, ``.npy`` (``cls_labels_onehot.npy``), ``.json`` (a COCO instances file when it has
    ``images``, ``annotations`` and ``categories``, else a mapping image -> tag list).

    The class names, in order: ``classes`` (a file, one name per line, or a list of foreground names);
    else those the source fixes (a wide CSV's header, a COCO file's categories in id order, the VOC
    classes for ``cls_labels_onehot.npy`` and for XML whose names are all VOC classes); else the sorted
    tag names, with a ``UserWarning`` that the order was inferred.

    Args:
        labels: the label file or folder.
        images: the folder the image entries are relative to.
        classes: see above.
        ids: only these images (entries without extension), in this order (e.g. a split list).

    Returns:
        :class:`ImageTags`, images in the file's order (first occurrence).

    Raises:
        FileNotFoundError: the label file, the images folder or listed images are missing (every missing
            image named with its row, the first ten and a count).
        ValueError: an unreadable file; a tag that is not a class, an image listed twice with different
            tags, a malformed row: the message names the file, the row and the value.
    """
    path = Path(labels)
    source = str(path)
    if path.is_dir():
        entries = _read_voc_xml(path)
        found = {tag for entry in entries for tag in entry.tags}
        fixed = list(VOC_CLASSES[1:]) if found <= set(VOC_CLASSES[1:]) else None
    elif not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    elif path.suffix.lower() == ".csv":
        entries, fixed = _read_csv(path), _csv_classes(path)
    elif path.suffix.lower() == ".npy":
        names = _resolve_classes(classes, list(VOC_CLASSES[1:]), [], source)
        return _build(_read_onehot(path, names), images, names, source, ids)
    elif path.suffix.lower() == ".json":
        data = _load_json(path)
        if _is_coco(data):
            del data
            entries, fixed = _read_coco(path)
        else:
            entries, fixed = _read_json_mapping(path, data), None
    else:
        raise ValueError(
            f"{path}: unknown label format {path.suffix!r} (expected .csv, .json, .npy or a folder of .xml)"
        )
    names = _resolve_classes(classes, fixed, entries, source)
    if classes is not None and fixed is not None and path.suffix.lower() == ".csv" and fixed != names[1:]:
        raise ValueError(
            f"{path} row 1: the class columns {fixed} differ from the classes given ({names[1:]})"
        )
    return _build(entries, images, names, source, ids)


def tags_from_mapping(
    tags: Mapping[str, Iterable[str]],
    images: str | os.PathLike,
    classes: Sequence[str] | None = None,
) -> ImageTags:
    """:class:`ImageTags` from labels held in Python: ``{"<image>": ["cat", "dog"], ...}``.

    Args:
        tags: image entry (relative to ``images``, with or without extension) -> its class names; an
            empty list is an image without foreground class.
        images: the images folder.
        classes: the foreground class names in order (a first ``"background"`` is skipped); default the
            sorted names found, with a warning.

    Raises:
        as :func:`read_tags`.
    """
    entries = [_Entry(str(image), tuple(names), f"entry {image!r}") for image, names in tags.items()]
    for entry in entries:
        if isinstance(tags[entry.image], str):
            raise ValueError(f"{entry.where}: expected a list of class names, got the string {entry.image!r}")
    names = _resolve_classes(classes, None, entries, "tags")
    return _build(entries, images, names, "tags", None)


# ---------------------------------------------------------------------------------------------------
# Datasets


def _as_tags(tags: ImageTags | None, paths, labels, class_names) -> ImageTags:
    if tags is not None:
        if paths is not None or labels is not None:
            raise ValueError("give either tags or paths and labels, not both")
        return tags
    if paths is None or labels is None:
        raise ValueError("give tags (an ImageTags), or paths and labels")
    paths = [Path(p) for p in paths]
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2 or labels.shape[0] != len(paths):
        raise ValueError(f"labels must have shape (N, C - 1), N = {len(paths)} images, got {labels.shape}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be multi-hot (0 or 1)")
    if class_names is None:
        class_names = ["background"] + [f"class_{i}" for i in range(1, labels.shape[1] + 1)]
    class_names = list(class_names)
    if len(class_names) != labels.shape[1] + 1:
        raise ValueError(
            f"class_names has {len(class_names)} names (background first), labels {labels.shape[1]} columns"
        )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) not found: {_listing(missing)}")
    base = Path(os.path.commonpath([p.resolve().parent for p in paths])) if paths else Path(".")
    ids = [p.resolve().relative_to(base).with_suffix("").as_posix() for p in paths]  # as read_tags names them
    return ImageTags(paths, ids, labels, class_names, "paths")


class _TagDataset(Dataset):
    tags: ImageTags

    @property
    def ids(self) -> list[str]:
        return self.tags.ids

    @property
    def paths(self) -> list[Path]:
        return self.tags.paths

    @property
    def labels(self) -> np.ndarray:
        return self.tags.labels

    @property
    def class_names(self) -> list[str]:
        return self.tags.class_names

    @property
    def num_classes(self) -> int:
        """C, background included."""
        return len(self.tags.class_names)

    @property
    def num_foreground_classes(self) -> int:
        """C - 1: the width of ``cls_label``, ``MCCNet``'s ``num_classes``."""
        return len(self.tags.class_names) - 1

    def __len__(self) -> int:
        return len(self.tags.paths)


class TagTrainViews(_TagDataset, TrainViews):
    """The MCC training views of tagged images: no mask anywhere.

    Yields exactly what :class:`~mcc.data.VOCTrainViews` yields (``x``, ``v1``, ``v2``, ``cls_label``,
    ``img_box``, ``id``; the same tensors for the same image, label, seed and index: both share
    :class:`~mcc.data.datasets.TrainViews`), so :func:`mcc.training.train` runs unchanged.

    Args:
        tags: what :func:`read_tags` / :func:`tags_from_mapping` return; or, instead,
        paths: image files, and
        labels: their (N, C - 1) multi-hot labels, with
        class_names: background first (default ``background, class_1, ...``).
        crop_size, scale_range, flip_p, global_size, global_scale, x_photometric, v1_photometric,
            v2_photometric, seed, mean, std, strong_view: as in :class:`~mcc.data.VOCTrainViews`.

    Raises:
        ValueError, FileNotFoundError: bad labels or missing images (named).
    """

    def __init__(
        self,
        tags: ImageTags | None = None,
        *,
        paths: Sequence[str | os.PathLike] | None = None,
        labels: np.ndarray | Sequence[Sequence[float]] | None = None,
        class_names: Sequence[str] | None = None,
        crop_size: int = 448,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_p: float = 0.5,
        global_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        x_photometric: PhotometricAugment | None = TrainViews._default,
        v1_photometric: PhotometricAugment | None = TrainViews._default,
        v2_photometric: PhotometricAugment | None = TrainViews._default,
        seed: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        strong_view: StrongAugment | None = None,
    ) -> None:
        self._init_views(
            crop_size=crop_size,
            scale_range=scale_range,
            flip_p=flip_p,
            global_size=global_size,
            global_scale=global_scale,
            x_photometric=x_photometric,
            v1_photometric=v1_photometric,
            v2_photometric=v2_photometric,
            seed=seed,
            mean=mean,
            std=std,
            strong_view=strong_view,
        )
        self.tags = _as_tags(tags, paths, labels, class_names)

    def _load(self, index: int) -> tuple[Image.Image, str]:
        return read_image(self.tags.paths[index]), self.tags.ids[index]


class TagImages(_TagDataset):
    """Whole tagged images, normalised, with their labels: for scoring tag predictions without masks.

    A sample is ``{"image": (3, H, W) float32, "cls_label": (C - 1,) float32, "id": str}`` (as
    :class:`~mcc.data.VOCSegmentation` without ``mask``).

    Args:
        tags, paths, labels, class_names: as in :class:`TagTrainViews`.
        mean, std: the normalisation (the network's ``pixel_mean`` / ``pixel_std``).
    """

    def __init__(
        self,
        tags: ImageTags | None = None,
        *,
        paths: Sequence[str | os.PathLike] | None = None,
        labels: np.ndarray | Sequence[Sequence[float]] | None = None,
        class_names: Sequence[str] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.mean, self.std = pixel_stats(mean, std)
        self.tags = _as_tags(tags, paths, labels, class_names)

    def __getitem__(self, index: int) -> dict:
        image = read_image(self.tags.paths[index])
        return {
            "image": normalize(image, self.mean, self.std),
            "cls_label": torch.from_numpy(self.tags.labels[index]),
            "id": self.tags.ids[index],
        }
