"""Augmentations of the training views, explicit about geometry so alignment is guaranteed.

Geometry (rescale, flip, crop) is drawn once as a :class:`CropGeometry` and applied to the image and to
anything that must stay aligned with it (the mask, the second view ``v2``); photometric changes are a
separate :class:`PhotometricAugment` that never moves a pixel. Randomness comes from an explicit
``torch.Generator``, so a sample is a pure function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "pixel_stats",
    "normalize",
    "denormalize",
    "CropGeometry",
    "sample_crop_geometry",
    "sample_resized_crop",
    "PhotometricAugment",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(generator: torch.Generator, p: float) -> bool:
    # always consume one draw, so changing p does not shift the rest of the sample's random stream
    return torch.rand((), generator=generator).item() < p


def pixel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Checks per-channel pixel statistics and returns them as tuples of floats.

    Args:
        mean: three per-channel means of RGB in [0, 1] (ImageNet's :data:`IMAGENET_MEAN`, CLIP's
            ``(0.4815, 0.4578, 0.4082)``; a timm model's ``pretrained_cfg["mean"]``).
        std: three positive per-channel standard deviations.

    Raises:
        ValueError: not three finite values each, or a std that is not positive (the message names it).
    """
    checked = []
    for name, values in (("mean", mean), ("std", std)):
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected 3 numbers (R, G, B), got {values!r}") from None
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{name}: expected 3 finite numbers (R, G, B), got {values}")
        if name == "std" and min(values) <= 0:
            raise ValueError(f"std: expected positive values, got {values}")
        checked.append(values)
    return checked[0], checked[1]


def normalize(
    image: Image.Image | np.ndarray | torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """RGB image(s) -> normalised float32 tensor ``(rgb - mean) / std``, channels first.

    Accepted forms (uint8 values are 0-255, floating values RGB in [0, 1]):

    * a PIL image (converted to RGB);
    * a NumPy array (H, W, 3), channels last as ``np.asarray(pil_image)`` gives;
    * a tensor (3, H, W) or a batch (B, 3, H, W), channels first as the network takes.

    Args:
        image: the image(s).
        mean: per-channel mean of RGB in [0, 1]; default ImageNet's (the statistics of the backbone's
            weights: CLIP and EVA-02 use CLIP's, see docs/backbones.md).
        std: per-channel standard deviation; default ImageNet's.

    Returns:
        shape (3, H, W), or (B, 3, H, W) for a batch, dtype float32, on the input tensor's device.

    Raises:
        ValueError: ``image`` is of another type or shape, or not uint8 / floating; ``mean``/``std`` not
            three numbers (std positive).
    """
    mean, std = pixel_stats(mean, std)
    if isinstance(image, Image.Image):
        rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected a (H, W, 3) array (channels last), got shape {image.shape}")
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(
                f"image: expected a (3, H, W) or (B, 3, H, W) tensor (channels first), got "
                f"{tuple(image.shape)}"
            )
        rgb = image
    else:
        raise ValueError(
            f"image: expected a PIL image, a NumPy array or a tensor, got {type(image).__name__}"
        )
    if rgb.dtype == torch.uint8:
        rgb = rgb.float() / 255.0
    elif rgb.is_floating_point():
        rgb = rgb.float()
    else:
        raise ValueError(f"image: expected uint8 (0-255) or floating (0-1) values, got {rgb.dtype}")
    return (rgb - rgb.new_tensor(mean).view(3, 1, 1)) / rgb.new_tensor(std).view(3, 1, 1)


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo :func:`normalize`: back to RGB in [0, 1] (e.g. for PAR).

    Args:
        images: shape (..., 3, H, W), normalised with ``mean``/``std``.
        mean: the per-channel mean they were normalised with; default ImageNet's.
        std: the per-channel standard deviation; default ImageNet's.
    Returns:
        same shape and dtype, RGB in [0, 1] (the zero padding of a crop becomes the mean colour).

    Raises:
        ValueError: ``images`` not of shape (..., 3, H, W); ``mean``/``std`` not three numbers.
    """
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"images: expected shape (..., 3, H, W), got {tuple(images.shape)}")
    mean, std = pixel_stats(mean, std)
    return (images * images.new_tensor(std).view(3, 1, 1) + images.new_tensor(mean).view(3, 1, 1)).clamp(
        0.0, 1.0
    )


@dataclass(frozen=True)
class CropGeometry:
    """Rescale, optional horizontal flip, then a ``crop_size`` square window with zero padding.

    Attributes:
        scaled_size: (height, width) of the image after rescaling.
        flip: horizontal flip after rescaling.
        top, left: corner of the crop window in the rescaled (flipped) image; negative = padding.
        crop_size: side of the output.
        box: (y0, y1, x0, x1), the part of the output covered by the image, in output pixels.
    """

    scaled_size: tuple[int, int]
    flip: bool
    top: int
    left: int
    crop_size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        height, width = self.scaled_size
        y0, x0 = max(-self.top, 0), max(-self.left, 0)
        y1 = min(self.crop_size, height - self.top)
        x1 = min(self.crop_size, width - self.left)
        return y0, y1, x0, x1

    def crop(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        """The part of the image that lands inside the window (size = box size, no padding yet)."""
        height, width = self.scaled_size
        image = image.resize((width, height), resample)
        if self.flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        y0, y1, x0, x1 = self.box
        return image.crop((self.left + x0, self.top + y0, self.left + x1, self.top + y1))

    def paste(self, region: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """Place a cropped region (C, h, w) or (h, w) into a ``fill``-ed output of side ``crop_size``."""
        y0, y1, x0, x1 = self.box
        out = region.new_full((*region.shape[:-2], self.crop_size, self.crop_size), fill)
        out[..., y0:y1, x0:x1] = region
        return out


def sample_crop_geometry(
    height: int,
    width: int,
    crop_size: int,
    scale_range: tuple[float, float],
    flip_p: float,
    generator: torch.Generator,
) -> CropGeometry:
    """Draw the geometry of the main view ``x``: random rescale, flip, crop (docs/method.md section 2).

    A side longer than ``crop_size`` is cropped at a uniform offset; a shorter side is placed at a uniform
    offset inside the window and the rest padded.
    """
    scale = _uniform(generator, *scale_range)
    flip = _chance(generator, flip_p)
    scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
    corner = []
    for side in scaled:
        slack = side - crop_size
        offset = int(torch.randint(abs(slack) + 1, (), generator=generator))
        corner.append(offset if slack >= 0 else -offset)
    return CropGeometry(scaled_size=scaled, flip=flip, top=corner[0], left=corner[1], crop_size=crop_size)


def sample_resized_crop(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """Window of a random resized crop: area fraction in ``scale``, aspect (w/h) log-uniform in ``ratio``.

    Returns:
        (top, left, crop_height, crop_width) inside the image. After ten misses falls back to the largest
        centred window whose aspect lies in ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(height - crop_h + 1, (), generator=generator))
            left = int(torch.randint(width - crop_w + 1, (), generator=generator))
            return top, left, crop_h, crop_w
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_h, crop_w = height, round(height * ratio[1])
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class PhotometricAugment:
    """Colour jitter, grayscale, Gaussian blur and solarize on an RGB PIL image; never moves a pixel.

    The defaults are those of ``x`` in docs/method.md section 2 (DINO's first global view): jitter
    (brightness, contrast, saturation, hue) = (0.4, 0.4, 0.2, 0.1) with p = 0.8 in random order,
    grayscale p = 0.2, blur p = 1 with sigma in [0.1, 2.0], no solarize.

    Args:
        jitter: maximal (brightness, contrast, saturation, hue) changes; factors are drawn in
            [1 - j, 1 + j], the hue shift in [-h, h] (h <= 0.5, in turns of the colour wheel).
        jitter_p: probability of applying the jitter.
        grayscale_p: probability of converting to grayscale (kept 3-channel).
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation, in pixels.
        solarize_p: probability of inverting every value >= 128.
    """

    def __init__(
        self,
        jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 1.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_p: float = 0.0,
    ) -> None:
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(f"jitter: expected 4 non-negative values with hue <= 0.5, got {tuple(jitter)}")
        for name, p in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("blur_p", blur_p),
                        ("solarize_p", solarize_p)):  # fmt: skip
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        if not 0.0 <= blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma: expected 0 <= low <= high, got {blur_sigma}")
        self.jitter = tuple(float(j) for j in jitter)
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.solarize_p = solarize_p

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(jitter={self.jitter}, jitter_p={self.jitter_p}, "
            f"grayscale_p={self.grayscale_p}, blur_p={self.blur_p}, blur_sigma={self.blur_sigma}, "
            f"solarize_p={self.solarize_p})"
        )

    def _jitter(self, image: Image.Image, generator: torch.Generator) -> Image.Image:
        brightness, contrast, saturation, hue = self.jitter
        factors = [_uniform(generator, max(0.0, 1 - j), 1 + j) for j in (brightness, contrast, saturation)]
        shift = _uniform(generator, -hue, hue)
        for op in torch.randperm(4, generator=generator).tolist():
            if op == 0:
                image = ImageEnhance.Brightness(image).enhance(factors[0])
            elif op == 1:
                image = ImageEnhance.Contrast(image).enhance(factors[1])
            elif op == 2:
                image = ImageEnhance.Color(image).enhance(factors[2])
            elif shift != 0.0:
                hsv = np.array(image.convert("HSV"))
                # uint8 addition wraps around, which is exactly a rotation of the hue circle
                hsv[..., 0] += np.uint8(round(shift * 255) % 256)
                image = Image.fromarray(hsv, "HSV").convert("RGB")
        return image

    def __call__(self, image: Image.Image, generator: torch.Generator) -> Image.Image:
        """Augment ``image`` (RGB PIL) with randomness from ``generator``; returns a new RGB PIL image."""
        # draw every decision up front: the stream consumed does not depend on the outcomes
        do_jitter = _chance(generator, self.jitter_p)
        do_gray = _chance(generator, self.grayscale_p)
        do_blur = _chance(generator, self.blur_p)
        sigma = _uniform(generator, *self.blur_sigma)
        do_solarize = _chance(generator, self.solarize_p)
        jitter_seed = int(torch.randint(2**62, (), generator=generator))
        if do_jitter and any(self.jitter):
            image = self._jitter(image, torch.Generator().manual_seed(jitter_seed))
        if do_gray:
            image = image.convert("L").convert("RGB")
        if do_blur and sigma > 0:
            image = image.filter(ImageFilter.GaussianBlur(radius=sigma))
        if do_solarize:
            image = ImageOps.solarize(image, threshold=128)
        return image
