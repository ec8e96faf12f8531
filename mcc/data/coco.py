"""Convert COCO 2014 instance annotations into a VOC-layout root that :class:`~mcc.data.VOCSegmentation`
and :class:`~mcc.data.VOCTrainViews` read.

Output (docs/method.md section 6)::

    out/
        JPEGImages/train2014/COCO_train2014_<12 digits>.jpg    (links to, or copies of, the COCO images)
        JPEGImages/val2014/COCO_val2014_<12 digits>.jpg
        SegmentationClass/train2014/COCO_train2014_<12 digits>.png
        SegmentationClass/val2014/COCO_val2014_<12 digits>.png
        ImageSets/Segmentation/{train,val,val_part}.txt
        classes.txt                                            (background + 80 names)

Ids are the file stems (``COCO_val2014_000000000042``); the reader finds the sub-folder from the id's
middle part. ``train``/``val`` list the images with at least one foreground pixel (82081 / 40137 for
COCO 2014); ``val_part`` is the shipped 4999-id validation subset, restricted to converted images.

Mask rule: class = 1 + index of the category id in the sorted category ids (so 1..80, background 0).
Instances are painted from the largest area to the smallest, so where two overlap the smaller one - most
often the object in front (a cup on a table, a person on a sofa) - wins. Crowd regions (``iscrowd=1``) are
coarse and may hide unlabelled instances of other classes: their pixels become 255 (ignore) unless a
non-crowd instance covers them.

Command line (needs ``pycocotools``; ``tqdm`` for a progress bar)::

    python -m mcc.data.coco_to_voc --coco-root /data/coco --out /data/coco_voc
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from mcc.data.layout import CLASSES_FILE, IGNORE_INDEX, IMAGE_DIR, SPLIT_DIR, voc_palette

__all__ = ["coco_to_voc", "coco_instance_mask"]

COCO_SPLITS = {"train2014": "train", "val2014": "val"}


def _progress(items: Sequence, description: str, enabled: bool) -> Iterator:
    """tqdm when installed, otherwise a line every 10 %."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        step = max(1, len(items) // 10)
        for index, item in enumerate(items):
            if index % step == 0:
                print(f"{description}: {index}/{len(items)}", file=sys.stderr, flush=True)
            yield item
        print(f"{description}: {len(items)}/{len(items)}", file=sys.stderr, flush=True)
        return
    yield from tqdm(items, desc=description)


def coco_instance_mask(coco, image_info: dict, class_of_category: dict[int, int]) -> np.ndarray:
    """Class-index mask of one image from its instance annotations (rule in the module docstring).

    Args:
        coco: a ``pycocotools.coco.COCO`` index.
        image_info: the image's entry in ``coco.imgs``.
        class_of_category: COCO category id -> class index (1..80).
    Returns:
        mask, shape (height, width), dtype uint8; 0 background, 255 crowd-only pixels.
    """
    mask = np.zeros((image_info["height"], image_info["width"]), dtype=np.uint8)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_info["id"], iscrowd=None))
    instances = sorted(
        (a for a in annotations if not a.get("iscrowd", 0)), key=lambda a: a["area"], reverse=True
    )
    with warnings.catch_warnings():
        # pycocotools' decoder trips NumPy 2's __array__(copy=...) deprecation on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        for annotation in annotations:
            if annotation.get("iscrowd", 0):
                mask[coco.annToMask(annotation) > 0] = IGNORE_INDEX
        for annotation in instances:
            mask[coco.annToMask(annotation) > 0] = class_of_category[annotation["category_id"]]
    return mask


def _link_images(source: Path, target: Path, copy: bool) -> None:
    if target.is_symlink() or target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            target.symlink_to(source.resolve(), target_is_directory=True)
            return
        except OSError:
            pass  # e.g. no symlink permission on Windows: copy instead
    shutil.copytree(source, target)


def coco_to_voc(
    coco_root: str | os.PathLike,
    out: str | os.PathLike,
    splits: Iterable[str] = ("train2014", "val2014"),
    *,
    copy_images: bool = False,
    progress: bool = True,
) -> Path:
    """Write VOC-style masks, split lists and class names for COCO 2014.

    Args:
        coco_root: folder holding ``annotations/instances_<split>.json`` and the image folders ``<split>/``.
        out: output root (layout in the module docstring).
        splits: COCO splits to convert.
        copy_images: copy the image folders instead of symlinking them.
        progress: show a progress bar (tqdm if installed, else plain lines on stderr).
    Returns:
        the output root, as a Path.
    Raises:
        FileNotFoundError: an annotation file or image folder is missing (names it).
        ImportError: pycocotools is not installed.
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as error:
        raise ImportError("coco_to_voc needs pycocotools: pip install pycocotools") from error
    coco_root, root = Path(coco_root), Path(out)
    if not coco_root.is_dir():
        raise FileNotFoundError(f"COCO root not found: {coco_root}")
    palette = voc_palette()
    class_names: list[str] | None = None
    written: dict[str, list[str]] = {}
    for split in splits:
        if split not in COCO_SPLITS:
            raise ValueError(f"splits: expected names among {sorted(COCO_SPLITS)}, got {split!r}")
        annotation_file = coco_root / "annotations" / f"instances_{split}.json"
        image_source = coco_root / split
        if not annotation_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
        if not image_source.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {image_source}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing chatter
            coco = COCO(str(annotation_file))
        categories = sorted(coco.cats)
        names = ["background"] + [coco.cats[c]["name"] for c in categories]
        if class_names is not None and names != class_names:
            raise ValueError(f"{annotation_file}: categories differ from those of the other split")
        class_names = names
        class_of_category = {category: index + 1 for index, category in enumerate(categories)}

        mask_dir = root / "SegmentationClass" / split
        mask_dir.mkdir(parents=True, exist_ok=True)
        _link_images(image_source, root / IMAGE_DIR / split, copy_images)
        ids = []
        for image_id in _progress(sorted(coco.imgs), f"masks {split}", progress):
            info = coco.imgs[image_id]
            mask = coco_instance_mask(coco, info, class_of_category)
            stem = Path(info["file_name"]).stem
            image = Image.fromarray(mask)
            image.putpalette(palette)
            image.save(mask_dir / f"{stem}.png")
            if ((mask > 0) & (mask != IGNORE_INDEX)).any():
                ids.append(stem)
        written[COCO_SPLITS[split]] = ids

    split_dir = root / SPLIT_DIR
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in written.items():
        (split_dir / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    if "val" in written:
        shipped = resources.files("mcc.data").joinpath("splits", "coco", "val_part.txt").read_text().split()
        converted = set(written["val"])
        (split_dir / "val_part.txt").write_text("".join(f"{i}\n" for i in shipped if i in converted))
    if class_names is not None:
        (root / CLASSES_FILE).write_text("".join(f"{name}\n" for name in class_names))
    return root
