"""A synthetic VOC: small images of textured shapes on cluttered backgrounds, with exact masks.

It exists so that the whole pipeline (classifier, CAMs, PAR refinement, MCC, segmentation) can be trained
and checked on a CPU in minutes, on data whose ground truth is exact. What varies, and why:

* **Five foreground classes**, each a shape with its own texture and colour statistics, so that an image
  label is learnable from appearance by a small ViT from scratch:

  ====== ============================ =================== =======================================
  class  shape                        hue (jittered)      texture
  ====== ============================ =================== =======================================
  disc   ellipse, aspect 0.7-1        red                 radial shading (bright centre)
  box    rotated rectangle, 0.5-1     blue                stripes along its long axis, 3-6 px
  tri    equilateral triangle         green               checkerboard, 3-7 px cells
  ring   annulus, inner 0.45-0.65     orange              per-pixel speckle
  cross  plus sign, arm width 0.3-0.45 purple             grid of bright dots
  ====== ============================ =================== =======================================

  Hue varies by +-0.05 turns, saturation 0.45-0.9, brightness 0.45-0.95, size (radius 12-28 % of the
  side), rotation and position. Disc (red) and ring (orange) share warm hues and are told apart by shape
  and texture, so colour alone is a strong but imperfect cue.
* **Several objects per image** (1-4, classes drawn with repetition, painted in order): partial overlaps
  are allowed, but a placement is redrawn when it would hide more than half of an earlier object or leave
  the new one too small; objects may be cut by the image border. Multi-label images are what make CAMs
  of different classes compete.
* **Textured, cluttered backgrounds**: a desaturated base colour with a smooth gradient, two oriented
  gratings, pixel noise, and 3-9 small distractors (line segments and blobs of random colour). The
  distractors carry object-like edges and colours that are not objects, so neither "any edge" nor "any
  saturated pixel" is foreground: CAMs are blobby at token resolution and leak onto clutter, while the
  objects' sharp colour edges let a colour-affinity refinement (PAR) recover their exact outlines. That
  gap (CAM clearly below refined pseudo labels) is the point of the set.
* **Exact masks**: images are rendered from the masks with hard edges (no anti-aliasing), so every pixel's
  label is its true class; only JPEG compression blurs the colours at edges. VOC's 5 px "ignore" band
  around objects exists because hand annotation is uncertain there; here it is not, so by default no
  255 is written (``ignore_border=0``); ``ignore_border=k`` marks pixels within k px of a class boundary
  255 to mimic VOC.

Every image is a pure function of ``(seed, split, index)``: the first N images of a set are the same
whatever ``num_train``/``num_val`` is.

Command line::

    python -m mcc.data.synthetic --out DIR --num-train 400 --num-val 100 --size 128 --seed 0
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mcc.data.layout import CLASSES_FILE, IGNORE_INDEX, IMAGE_DIR, SPLIT_DIR, voc_palette

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic_voc", "render_synthetic_sample"]

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "box", "tri", "ring", "cross")
_HUES = {1: 0.0, 2: 0.62, 3: 0.33, 4: 0.08, 5: 0.8}
_SPLIT_CODES = {"train": 1, "val": 2}


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _object_frame(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, size: int):
    """Random centre, radius and rotation; returns object-frame coordinates (in radii and in pixels)."""
    radius = rng.uniform(0.12, 0.28) * size
    cy, cx = rng.uniform(0.1 * size, 0.9 * size, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u_px = (xs - cx) * cos + (ys - cy) * sin
    v_px = -(xs - cx) * sin + (ys - cy) * cos
    return u_px / radius, v_px / radius, u_px, v_px


def _shape_and_texture(cls: int, rng: np.random.Generator, u, v, u_px, v_px) -> tuple[np.ndarray, np.ndarray]:
    """Binary shape of class ``cls`` and a brightness factor map (its texture), both (S, S)."""
    if cls == 1:  # disc: ellipse with a bright centre
        aspect = rng.uniform(0.7, 1.0)
        rr = (u / aspect) ** 2 + v**2
        return rr <= 1.0, 1.25 - 0.45 * rr
    if cls == 2:  # box: rectangle with stripes along its long side
        aspect = rng.uniform(0.5, 1.0)
        period = rng.uniform(3.0, 6.0)
        stripes = np.sin(2 * np.pi * v_px / period) > 0
        return (np.abs(u) <= 1.0) & (np.abs(v) <= aspect), np.where(stripes, 1.2, 0.8)
    if cls == 3:  # triangle: three half-planes, checkerboard cells
        inside = np.ones_like(u, dtype=bool)
        for angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
            inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
        cell = rng.uniform(3.0, 7.0)
        checker = (np.floor(u_px / cell) + np.floor(v_px / cell)) % 2 == 0
        return inside, np.where(checker, 1.2, 0.8)
    if cls == 4:  # ring: annulus with speckle
        inner = rng.uniform(0.45, 0.65)
        rr = np.sqrt(u**2 + v**2)
        return (rr >= inner) & (rr <= 1.0), 1.0 + 0.25 * rng.standard_normal(u.shape)
    # cross: plus sign with a grid of bright dots
    arm = rng.uniform(0.3, 0.45)
    inside = ((np.abs(u) <= arm) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= arm) & (np.abs(u) <= 1.0))
    dots = (np.sin(2 * np.pi * u_px / 5.0) > 0.5) & (np.sin(2 * np.pi * v_px / 5.0) > 0.5)
    return inside, np.where(dots, 1.35, 0.9)


def _background(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    base = _rgb(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.3, 0.8))
    gradient = rng.uniform(-0.25, 0.25, size=2)
    shade = 1.0 + gradient[0] * (ys / size - 0.5) + gradient[1] * (xs / size - 0.5)
    for _ in range(2):  # two oriented gratings
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period
        shade = shade + rng.uniform(0.03, 0.12) * np.sin(phase + rng.uniform(0, 2 * np.pi))
    image = base[None, None, :] * shade[..., None]
    image += rng.uniform(0.01, 0.05) * rng.standard_normal(image.shape)
    for _ in range(rng.integers(3, 10)):  # distractors: object-like edges and colours, not objects
        color = _rgb(rng.uniform(), rng.uniform(0.0, 0.6), rng.uniform(0.2, 0.95))
        cy, cx = rng.uniform(0, size, size=2)
        if rng.uniform() < 0.5:  # line segment
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.1, 0.4) * size
            along = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
            across = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
            region = (np.abs(along) <= length / 2) & (np.abs(across) <= rng.uniform(0.5, 1.5))
        else:  # small irregular blob
            radius = rng.uniform(0.02, 0.07) * size
            wobble = 1 + 0.3 * np.sin(3 * np.arctan2(ys - cy, xs - cx) + rng.uniform(0, 2 * np.pi))
            region = np.hypot(ys - cy, xs - cx) <= radius * wobble
        image[region] = color
    return image


def _ignore_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` px (Chebyshev) of a pixel of another class."""
    band = np.zeros(mask.shape, dtype=bool)
    padded = np.pad(mask, width, mode="edge")
    height, side = mask.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            band |= padded[width + dy : width + dy + height, width + dx : width + dx + side] != mask
    return band


def render_synthetic_sample(
    rng: np.random.Generator, size: int, ignore_border: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic image and its mask.

    Args:
        rng: NumPy generator, the only source of randomness.
        size: side of the square image in pixels.
        ignore_border: width in pixels of the 255 band drawn around class boundaries (0 = none).
    Returns:
        ``(image, mask)``: image shape (size, size, 3) uint8 RGB; mask shape (size, size) uint8 with values
        in [0, 6) (indices into :data:`SYNTHETIC_CLASSES`) and 255 on the ignore band. At least one
        object is visible.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, ys, xs, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    owner = np.full((size, size), -1, dtype=np.int16)  # which object is visible at each pixel
    areas: list[int] = []
    num_objects = rng.choice([1, 2, 3, 4], p=[0.25, 0.35, 0.25, 0.15])
    min_area = (0.1 * size) ** 2
    while len(areas) < num_objects:
        placed = False
        for _ in range(10):
            cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
            shape, texture = _shape_and_texture(cls, rng, *_object_frame(rng, ys, xs, size))
            if shape.sum() < min_area:
                continue
            visible = np.bincount(owner[~shape].ravel() + 1, minlength=len(areas) + 1)[1:]
            if areas and (visible < 0.5 * np.asarray(areas)).any():
                continue  # would hide more than half of an earlier object
            color = _rgb(
                _HUES[cls] + rng.uniform(-0.05, 0.05), rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.95)
            )
            image[shape] = color[None, :] * texture[shape][:, None]
            mask[shape] = cls
            owner[shape] = len(areas)
            areas.append(int(shape.sum()))
            placed = True
            break
        if not placed and areas:
            break  # crowded image: keep the objects placed so far
    if ignore_border > 0:
        mask[_ignore_band(mask, ignore_border)] = IGNORE_INDEX
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), mask


def make_synthetic_voc(
    out: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 50,
    size: int = 128,
    seed: int = 0,
    *,
    ignore_border: int = 0,
    jpeg_quality: int = 95,
) -> Path:
    """Write a complete VOC-layout root of synthetic images (see the module docstring).

    Writes ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (palette PNGs),
    ``ImageSets/Segmentation/{train,train_aug,val}.txt`` (``train_aug`` = ``train``) and ``classes.txt``
    (:data:`SYNTHETIC_CLASSES`). Ids are ``train_000000``, ``val_000000``, ...

    Args:
        out: output root (created; existing files of the same names are overwritten).
        num_train: number of training images (> 0).
        num_val: number of validation images (>= 0).
        size: image side in pixels (>= 32).
        seed: master seed; image i of a split is a pure function of ``(seed, split, i)``.
        ignore_border: width of the 255 band around class boundaries in the masks (default none).
        jpeg_quality: JPEG quality of the images.
    Returns:
        the root, as a Path.
    """
    if num_train <= 0 or num_val < 0:
        raise ValueError(f"num_train must be > 0 and num_val >= 0, got {num_train} and {num_val}")
    if size < 32:
        raise ValueError(f"size: expected at least 32 pixels, got {size}")
    if ignore_border < 0:
        raise ValueError(f"ignore_border: expected >= 0, got {ignore_border}")
    root = Path(out)
    image_dir, mask_dir, split_dir = root / IMAGE_DIR, root / "SegmentationClassAug", root / SPLIT_DIR
    for folder in (image_dir, mask_dir, split_dir):
        folder.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for split, count in (("train", num_train), ("val", num_val)):
        ids = []
        for index in range(count):
            image_id = f"{split}_{index:06d}"
            rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
            image, mask = render_synthetic_sample(rng, size, ignore_border)
            Image.fromarray(image).save(image_dir / f"{image_id}.jpg", quality=jpeg_quality)
            mask_image = Image.fromarray(mask)  # putpalette turns L into P
            mask_image.putpalette(palette)
            mask_image.save(mask_dir / f"{image_id}.png")
            ids.append(image_id)
        (split_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (split_dir / "train_aug.txt").write_text((split_dir / "train.txt").read_text())
    (root / CLASSES_FILE).write_text("".join(f"{name}\n" for name in SYNTHETIC_CLASSES))
    return root
