"""The VOC directory layout every dataset of this package reads, strictly.

A dataset root looks like::

    root/
        JPEGImages/<id>.jpg                (or .jpeg, .png, .bmp, .webp, .tif, .tiff; any case)
        SegmentationClassAug/<id>.png     (or SegmentationClass/; palette or grayscale PNG, 255 = ignore)
        ImageSets/Segmentation/<split>.txt
        classes.txt                        (one name per line, background first; without it: the 21
                                            PASCAL VOC names, with a warning)

COCO roots written by :mod:`mcc.data.coco_to_voc` use the same layout with one rule on top: an id of the
form ``COCO_<folder>_<digits>`` lives in the sub-folder ``<folder>`` (``train2014`` or ``val2014``) of
``JPEGImages`` and of the mask folder, so the ids in the split lists stay the plain COCO file stems.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "VOC_CLASSES",
    "IGNORE_INDEX",
    "read_class_names",
    "read_split",
    "voc_palette",
    "read_image",
    "read_mask",
    "DatasetRoot",
]

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

IMAGE_DIR = "JPEGImages"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # and their upper case
MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")
SPLIT_DIR = Path("ImageSets") / "Segmentation"
CLASSES_FILE = "classes.txt"
LABEL_CACHE_FILE = "mcc_image_labels.json"
_COCO_ID = re.compile(r"^COCO_((?:train|val|test)20\d\d)_\d+$")
_COCO_NUM_CLASSES = 81
_IMAGE_SUFFIXES_ANY_CASE = tuple(dict.fromkeys(s for x in IMAGE_SUFFIXES for s in (x, x.upper())))
LOOKED_FOR = f"looked for <id>{', <id>'.join(IMAGE_SUFFIXES)}, in lower or upper case"


def voc_palette(num_colors: int = 256) -> list[int]:
    """The PASCAL VOC colour map, flattened for ``PIL.Image.putpalette``.

    Colour ``i`` spreads the bits of ``i`` over the high bits of R, G and B (bit 0 -> R, bit 1 -> G,
    bit 2 -> B, then the next three bits one position lower), so neighbouring class ids get distinct
    colours; 255 (ignore) comes out near white.

    Returns:
        ``3 * num_colors`` ints in [0, 255].
    """
    palette = []
    for index in range(num_colors):
        rgb = [0, 0, 0]
        bits = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        palette.extend(rgb)
    return palette


def read_class_names(root: str | os.PathLike, warn: bool = False) -> list[str]:
    """Class names of a dataset root: ``root/classes.txt`` if present, else :data:`VOC_CLASSES`.

    Args:
        root: dataset root.
        warn: say in a :class:`UserWarning` when the names are defaulted (no ``classes.txt``); the
            datasets do, since a root of another label set needs its own names.
    Returns:
        names, background first; ``len(names)`` is the number of classes C (including background).
    Raises:
        ValueError: the file lists fewer than two names, a duplicate, or more than 255 names (255 is the
            ignore value of a mask).
    """
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        if warn:
            warnings.warn(
                f"{path} not found: using the {len(VOC_CLASSES)} PASCAL VOC class names (write classes.txt "
                "for another label set: one name per line, background first)",
                UserWarning,
                stacklevel=2,  # one line per process: every dataset of the root warns from here
            )
        return list(VOC_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise ValueError(f"{path}: needs background plus at least one class, got {len(names)} names")
    if len(names) > IGNORE_INDEX:
        raise ValueError(f"{path}: at most {IGNORE_INDEX} classes fit an 8-bit mask, got {len(names)}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate class names {duplicates}")
    return names


def _shipped_split(split: str, class_names: Sequence[str]) -> Path | None:
    """The split list shipped with the package for this kind of root, if any."""
    if tuple(class_names) == VOC_CLASSES:
        folder = "voc"
    elif len(class_names) == _COCO_NUM_CLASSES:
        folder = "coco"
    else:
        return None
    shipped = resources.files("mcc.data").joinpath("splits", folder, f"{split}.txt")
    return Path(str(shipped)) if shipped.is_file() else None


def read_split(root: str | os.PathLike, split: str, class_names: Sequence[str] | None = None) -> list[str]:
    """Image ids of a split, one per line of ``root/ImageSets/Segmentation/<split>.txt``.

    When the root has no list for ``split``, the list shipped with the package is used: the VOC lists
    (``train_aug``, ``train``, ``val``, ``test``) for a root with the VOC class names, COCO's
    ``val_part`` for a root with 81 classes.

    Args:
        root: dataset root.
        split: split name, e.g. ``"train_aug"``.
        class_names: the root's class names (default: :func:`read_class_names`), which pick the shipped lists.
    Returns:
        ids in file order.
    Raises:
        FileNotFoundError: neither the root nor the package has the list.
        ValueError: the list is empty or repeats an id.
    """
    path = Path(root) / SPLIT_DIR / f"{split}.txt"
    if not path.is_file():
        shipped = _shipped_split(split, class_names if class_names is not None else read_class_names(root))
        if shipped is None:
            raise FileNotFoundError(
                f"split list not found: {path} (and no list named {split!r} ships with mcc)"
            )
        path = shipped
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"split list {path} is empty")
    if any("," in i or ";" in i for i in ids[:2]):
        raise ValueError(
            f"split list {path} starts {ids[0]!r}: a split list is one image id per line (first column, "
            "separated by white space), not a CSV table"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"split list {path} repeats ids")
    return ids


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image completely, as RGB.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image or is truncated; the message names the file.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not inside a DataLoader worker later
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def _check_mask_values(mask: np.ndarray, num_classes: int, path: Path | str) -> np.ndarray:
    """Histogram of a mask's values; raises if one lies outside [0, num_classes) and is not 255."""
    counts = np.bincount(mask.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    bad = present[(present >= num_classes) & (present != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(
            f"mask {path} has values {bad.tolist()} outside [0, {num_classes}) (255 = ignore is allowed)"
        )
    return counts


def read_mask(path: str | os.PathLike, num_classes: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a class-index mask (palette or grayscale PNG) and check it.

    Args:
        path: mask file.
        num_classes: C; values must lie in [0, C) or be 255.
        size: expected ``(width, height)`` (the image's), or None to skip the check.
    Returns:
        mask, shape (H, W), dtype uint8.
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, not single-channel, wrong size or out-of-range values; the message names
            the file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"mask {path} has mode {image.mode!r}; expected a palette (P) or grayscale (L) PNG"
                )
            mask = np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"mask not found: {path}") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"cannot read mask {path}: {error}") from error
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        raise ValueError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is {size[0]}x{size[1]}"
        )
    _check_mask_values(mask, num_classes, path)
    return mask


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


class DatasetRoot:
    """A dataset root in VOC layout, resolved and checked once.

    Args:
        root: dataset root.
        split: split name (see :func:`read_split`).
        mask_dir: mask folder name; default ``SegmentationClassAug`` if present, else ``SegmentationClass``.
        masks: whether the split has masks (False for e.g. VOC ``test``).
        validate: check every id now: image and mask exist, image header readable, mask the image's size.
            Mask values are checked by the image-label pass regardless. Turn off for very large sets.

    Attributes:
        class_names: names, background first; ``num_classes = len(class_names)`` counts background,
            ``num_foreground_classes = num_classes - 1`` does not.
        ids: image ids of the split.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        mask_dir: str | None = None,
        masks: bool = True,
        validate: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.image_dir = self.root / IMAGE_DIR
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.mask_dir: Path | None = None
        if masks:
            candidates = (mask_dir,) if mask_dir is not None else MASK_DIRS
            found = [self.root / name for name in candidates if (self.root / name).is_dir()]
            if not found:
                raise FileNotFoundError(
                    f"mask folder not found: {' or '.join(str(self.root / n) for n in candidates)}"
                )
            self.mask_dir = found[0]
        self.class_names = read_class_names(self.root, warn=True)
        self.num_classes = len(self.class_names)
        self.split = split
        self.ids = read_split(self.root, split, self.class_names)
        if validate:
            self.validate()

    @property
    def num_foreground_classes(self) -> int:
        """Classes without background (VOC 20): the width of the image labels."""
        return self.num_classes - 1

    @staticmethod
    def _relative(image_id: str, suffix: str) -> str:
        match = _COCO_ID.match(image_id)
        return f"{match.group(1)}/{image_id}{suffix}" if match else f"{image_id}{suffix}"

    def image_path(self, image_id: str) -> Path:
        """The image of ``image_id``: ``<id>.jpg``, or the first of :data:`IMAGE_SUFFIXES` (any case) that
        exists; ``<id>.jpg`` when none does (a missing file)."""
        usual = self.image_dir / self._relative(image_id, ".jpg")
        found = getattr(self, "_image_suffix", ".jpg")
        path = usual if found == ".jpg" else usual.with_name(usual.stem + found)
        if path.is_file():
            return path
        for suffix in _IMAGE_SUFFIXES_ANY_CASE:
            candidate = usual.with_name(usual.stem + suffix)
            if candidate.is_file():
                self._image_suffix = suffix  # tried first for the next ids
                return candidate
        return usual

    def mask_path(self, image_id: str) -> Path:
        if self.mask_dir is None:
            raise ValueError(f"split {self.split!r} of {self.root} was opened without masks")
        return self.mask_dir / self._relative(image_id, ".png")

    def validate(self) -> None:
        """Check every id: files exist, image headers readable, masks the size of their images."""
        for image_id in self.ids:
            image_path = self.image_path(image_id)
            if not image_path.is_file():
                raise FileNotFoundError(
                    f"id {image_id!r} of split {self.split!r}: image not found: {image_path} ({LOOKED_FOR})"
                )
            if self.mask_dir is None:
                continue
            mask_path = self.mask_path(image_id)
            if not mask_path.is_file():
                raise FileNotFoundError(
                    f"id {image_id!r} of split {self.split!r}: mask not found: {mask_path}"
                )
            image_size, mask_size = _image_size(image_path), _image_size(mask_path)
            if image_size != mask_size:
                raise ValueError(
                    f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} (WxH) but its image {image_path} "
                    f"is {image_size[0]}x{image_size[1]}"
                )

    def image_labels(self) -> np.ndarray:
        """Multi-hot image-level labels derived from the masks, cached under the root.

        A class is present when at least one pixel of the mask has its index (background 0 and ignore 255
        excluded). The cache file ``mcc_image_labels.json`` maps each mask's path to its size, mtime and
        present values; entries whose mask changed are recomputed, so the cache is never stale. A
        read-only root just skips writing it.

        Returns:
            labels, shape (N, C - 1), dtype float32, row i for ``ids[i]``.
        Raises:
            ValueError: a mask holds a value outside [0, C) other than 255 (names the file).
        """
        if self.mask_dir is None:
            raise ValueError(f"split {self.split!r} of {self.root} has no masks to derive labels from")
        cache_path = self.root / LABEL_CACHE_FILE
        cache: dict[str, list] = {}
        if cache_path.is_file():
            try:
                cache = json.loads(cache_path.read_text()).get("masks", {})
            except (OSError, ValueError):
                cache = {}  # a damaged cache is rebuilt
        labels = np.zeros((len(self.ids), self.num_classes - 1), dtype=np.float32)
        changed = False
        for row, image_id in enumerate(self.ids):
            path = self.mask_path(image_id)
            key = path.relative_to(self.root).as_posix()
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"id {image_id!r} of split {self.split!r}: mask not found: {path}"
                ) from None
            stamp = [stat.st_size, stat.st_mtime_ns]
            entry = cache.get(key)
            if entry is None or entry[:2] != stamp:
                mask = read_mask(path, IGNORE_INDEX)  # values are checked against C below, cached or not
                values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
                entry = [*stamp, [int(v) for v in values if v != IGNORE_INDEX]]
                cache[key] = entry
                changed = True
            values = np.asarray(entry[2], dtype=np.int64)
            bad = values[values >= self.num_classes]
            if bad.size:
                raise ValueError(
                    f"mask {path} has values {bad.tolist()} outside [0, {self.num_classes}) "
                    "(255 = ignore is allowed)"
                )
            values = values[values > 0]
            labels[row, values - 1] = 1.0
        if changed:
            self._write_cache(cache_path, cache)
        return labels

    @staticmethod
    def _write_cache(path: Path, cache: dict) -> None:
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps({"version": 1, "masks": cache}))
            os.replace(temporary, path)  # atomic: concurrent ranks never read half a file
        except OSError:
            temporary.unlink(missing_ok=True)
