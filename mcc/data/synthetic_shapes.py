"""A synthetic multi-label classification set: a stand-in for ImageNet pretraining on a CPU.

No pretrained weights can be downloaded in some settings (offline machines, CI), yet MCC is a method for
a *pretrained* ViT. This module makes a separate classification set in the same visual family as the
synthetic VOC (:mod:`mcc.data.synthetic_voc`): textured shapes on cluttered backgrounds, but

* **other classes**: 16 shape x texture combinations, none of which is one of the synthetic VOC's five
  (disc/radial, box/stripes, tri/checker, ring/speckle, cross/dots). It adds three shapes (star, hexagon,
  crescent) and two textures (plain, waves), and pairs the VOC shapes with other textures;
* **colour is a weak cue**: each class has its own hue, sixteen hues spread round the colour wheel
  (1/16 turn apart) and jittered by +-0.06 turns, so neighbouring classes overlap in colour and are told
  apart by shape and texture (in the synthetic VOC the five hues are far apart). A first version with
  uniformly random hues did not learn in 800 steps (the loss stayed at the label prior's);
* **other images**: image ``i`` is a pure function of ``(seed, 7, i)`` (the synthetic VOC uses split codes
  1 and 2), and the default seed differs too;
* **multi-label**: 1-3 objects per image, the label is the set of classes that stay visible.

It is *not* ImageNet: 16 classes instead of 1000, thousands of 64 px images instead of 1.28 million
photographs, and the same drawing code for backgrounds and textures as the segmentation set, so what
transfers is much closer to the target than ImageNet is to VOC. Use it to ask what a pretrained start
changes on a CPU, not to predict numbers on VOC.

Example:
    >>> data = SyntheticShapes(num_images=4, size=64)
    >>> sample = data[0]
    >>> sample["image"].shape, sample["label"].shape
    (torch.Size([3, 64, 64]), torch.Size([16]))
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mcc.data.synthetic_voc import _background, _object_frame, _rgb
from mcc.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SHAPE_CLASSES", "SyntheticShapes", "render_shapes_sample"]

# (shape, texture) of every class; the synthetic VOC's five pairs are deliberately absent.
SHAPE_CLASSES: tuple[tuple[str, str], ...] = (
    ("disc", "stripes"),
    ("disc", "dots"),
    ("box", "checker"),
    ("box", "radial"),
    ("tri", "speckle"),
    ("tri", "plain"),
    ("ring", "stripes"),
    ("ring", "waves"),
    ("cross", "checker"),
    ("cross", "plain"),
    ("star", "dots"),
    ("star", "speckle"),
    ("hexagon", "radial"),
    ("hexagon", "waves"),
    ("crescent", "checker"),
    ("crescent", "stripes"),
)
_SPLIT_CODE = 7  # the synthetic VOC uses 1 (train) and 2 (val)
# Hue of each class in turns: k/16 in a fixed shuffled order, so hue does not follow the shape list.
_HUE_ORDER = (5, 12, 2, 9, 15, 0, 7, 13, 3, 10, 6, 1, 14, 8, 4, 11)
_HUE_JITTER = 0.06


def _shape(name: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary shape in object-frame coordinates ``u, v`` (unit = the object's radius)."""
    if name == "disc":
        return (u / rng.uniform(0.7, 1.0)) ** 2 + v**2 <= 1.0
    if name == "box":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= rng.uniform(0.5, 1.0))
    if name == "tri":
        inside = np.ones_like(u, dtype=bool)
        for angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
            inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
        return inside
    if name == "ring":
        rr = np.sqrt(u**2 + v**2)
        return (rr >= rng.uniform(0.45, 0.65)) & (rr <= 1.0)
    if name == "cross":
        arm = rng.uniform(0.3, 0.45)
        return ((np.abs(u) <= arm) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= arm) & (np.abs(u) <= 1.0))
    if name == "star":  # five points: radius between 0.45 and 1 with the angle
        radius = 0.45 + 0.55 * np.abs(np.cos(2.5 * np.arctan2(v, u)))
        return np.hypot(u, v) <= radius
    if name == "hexagon":
        inside = np.ones_like(u, dtype=bool)
        for k in range(6):
            angle = k * np.pi / 3
            inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.87
        return inside
    if name == "crescent":  # a disc minus a shifted disc
        shift = rng.uniform(0.35, 0.6)
        return (u**2 + v**2 <= 1.0) & ((u - shift) ** 2 + v**2 > 0.75**2)
    raise ValueError(f"unknown shape {name!r}")


def _texture(name: str, rng: np.random.Generator, u, v, u_px, v_px) -> np.ndarray:
    """Brightness factor map of a texture (1 = the object's colour)."""
    if name == "radial":
        return 1.25 - 0.45 * (u**2 + v**2)
    if name == "stripes":
        return np.where(np.sin(2 * np.pi * v_px / rng.uniform(3.0, 6.0)) > 0, 1.2, 0.8)
    if name == "checker":
        cell = rng.uniform(3.0, 7.0)
        return np.where((np.floor(u_px / cell) + np.floor(v_px / cell)) % 2 == 0, 1.2, 0.8)
    if name == "speckle":
        return 1.0 + 0.25 * rng.standard_normal(u.shape)
    if name == "dots":
        dots = (np.sin(2 * np.pi * u_px / 5.0) > 0.5) & (np.sin(2 * np.pi * v_px / 5.0) > 0.5)
        return np.where(dots, 1.35, 0.9)
    if name == "waves":  # concentric bands
        return 1.0 + 0.25 * np.sin(2 * np.pi * np.hypot(u_px, v_px) / rng.uniform(4.0, 7.0))
    if name == "plain":
        return np.ones_like(u)
    raise ValueError(f"unknown texture {name!r}")


def render_shapes_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one classification image and its multi-hot label.

    Args:
        rng: NumPy generator, the only source of randomness.
        size: side of the square image in pixels (>= 16).

    Returns:
        ``(image, label)``: image (size, size, 3) uint8 RGB; label (len(SHAPE_CLASSES),) float32 multi-hot
        over the classes with at least 20 % of their pixels visible (at least one).
    """
    if size < 16:
        raise ValueError(f"size: expected at least 16 pixels, got {size}")
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, ys, xs, size)
    owner = np.full((size, size), -1, dtype=np.int16)
    classes: list[int] = []
    areas: list[int] = []
    num_objects = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    for _ in range(10 * num_objects):
        if len(classes) == num_objects:
            break
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        shape_name, texture_name = SHAPE_CLASSES[cls]
        u, v, u_px, v_px = _object_frame(rng, ys, xs, size)
        shape = _shape(shape_name, rng, u, v)
        if shape.sum() < (0.1 * size) ** 2:
            continue
        texture = _texture(texture_name, rng, u, v, u_px, v_px)
        hue = _HUE_ORDER[cls] / len(SHAPE_CLASSES) + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
        color = _rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.95))
        image[shape] = color[None, :] * texture[shape][:, None]
        owner[shape] = len(classes)
        classes.append(cls)
        areas.append(int(shape.sum()))
    label = np.zeros(len(SHAPE_CLASSES), dtype=np.float32)
    visible = np.bincount(owner.ravel() + 1, minlength=len(classes) + 1)[1:]
    for index, cls in enumerate(classes):
        if visible[index] >= 0.2 * areas[index]:
            label[cls] = 1.0
    if not label.any() and classes:  # keep the most visible object's class
        label[classes[int(np.argmax(visible))]] = 1.0
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), label


class SyntheticShapes(Dataset):
    """In-memory multi-label classification set of :func:`render_shapes_sample` images.

    Images are rendered once, when the dataset is built. A sample is a dict with ``image`` (3, S, S)
    float32, ImageNet-normalised (as :class:`~mcc.data.VOCTrainViews` gives them), randomly flipped
    left-right when ``flip`` is set, and ``label`` (K,) float32 multi-hot, K = ``len(SHAPE_CLASSES)``.

    Args:
        num_images: number of images (> 0).
        size: image side in pixels.
        seed: master seed; image i is a pure function of ``(seed, i)`` and differs from every synthetic
            VOC image whatever the seeds.
        offset: index of the first image (a validation set: ``offset=num_train``, disjoint images).
        flip: random horizontal flips (training).
    """

    def __init__(
        self, num_images: int, size: int = 64, seed: int = 1000, *, offset: int = 0, flip: bool = False
    ) -> None:
        if num_images <= 0:
            raise ValueError(f"num_images must be > 0, got {num_images}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        images, labels = [], []
        for index in range(offset, offset + num_images):
            image, label = render_shapes_sample(np.random.default_rng([seed, _SPLIT_CODE, index]), size)
            images.append(torch.from_numpy(image))
            labels.append(torch.from_numpy(label))
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self.images = (torch.stack(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        self.labels = torch.stack(labels)
        self.flip = flip
        self.class_names = [f"{shape}/{texture}" for shape, texture in SHAPE_CLASSES]

    @property
    def num_classes(self) -> int:
        """K, the number of classes (no background class)."""
        return len(SHAPE_CLASSES)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "label": self.labels[index]}
