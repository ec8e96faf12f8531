"""Writers of tiny VOC-layout roots for the data tests."""

from pathlib import Path

import numpy as np
from PIL import Image

from mcc.data import voc_palette


def write_voc_root(
    root: Path,
    num_images: int = 3,
    height: int = 20,
    width: int = 28,
    class_names: list[str] | None = None,
    split: str = "train",
) -> list[str]:
    """Images of noise with one rectangle of class ``i % (C - 1) + 1`` each; image i's mask also has a
    255 stripe. Returns the ids of the written split."""
    rng = np.random.default_rng(0)
    num_classes = len(class_names) if class_names else 21
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"img_{i:03d}" for i in range(num_images)]
    for index, image_id in enumerate(ids):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[2 : height // 2, 3 : width // 2] = index % (num_classes - 1) + 1
        mask[-1] = 255
        write_mask(root / "SegmentationClassAug" / f"{image_id}.png", mask)
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    if class_names:
        (root / "classes.txt").write_text("\n".join(class_names) + "\n")
    return ids


def write_mask(path: Path, mask: np.ndarray) -> None:
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(voc_palette())
    image.save(path)
