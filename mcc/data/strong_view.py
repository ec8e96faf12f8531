"""DuPL's strong view: RandAugment over seven photometric operations (then, in the dataset, a flip).

DuPL (Wu et al., CVPR 2024; github.com/Wu0409/DuPL) perturbs each training crop with RandAugment
(n = 5 operations drawn with replacement from AutoContrast, Equalize, Posterize, Color, Contrast,
Brightness, Sharpness; magnitude m = 10 of 30) and flips it horizontally; the network sees it at 0.75
of the crop size. The operations are torchvision's ``transforms.v2.functional`` ones on uint8 images.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

__all__ = ["StrongAugment"]

# DuPL's table: (operation, min, max); the magnitude is m / 30 * (max - min) + min.
_OPS = (
    ("autocontrast", 0.0, 1.0),
    ("equalize", 0.0, 1.0),
    ("posterize", 0.0, 6.0),
    ("color", 0.1, 1.9),
    ("contrast", 0.1, 1.9),
    ("brightness", 0.1, 1.9),
    ("sharpness", 0.1, 1.9),
)


class StrongAugment:
    """DuPL's RandAugment: ``num_ops`` operations drawn with replacement from seven, fixed magnitude.

    At DuPL's ``magnitude=10`` (of 30) every enhancement factor (colour = saturation, contrast,
    brightness, sharpness) is 0.7 and posterize keeps ``int(2.0) = 2`` bits. The operations are
    torchvision's (``autocontrast``, ``equalize``, ``posterize``, ``adjust_saturation``,
    ``adjust_contrast``, ``adjust_brightness``, ``adjust_sharpness``) with DuPL's magnitudes, not
    torchvision's ``RandAugment``, whose table differs (14 operations with geometric ones; factors
    ``1 +- 0.3`` with a random sign and 7-bit posterize at magnitude 10 of 31 bins). Against DuPL's PIL
    operations, pixel values can differ by rounding: torchvision blends uint8 images in float and
    truncates (autocontrast may top out at 254 where PIL reaches 255), and its contrast uses the
    unrounded mean grey level where PIL rounds it.

    The horizontal flip that completes DuPL's strong view is not done here: the flip must mirror the
    whole crop (:class:`~mcc.data.VOCTrainViews` does it after pasting the region), so that the
    training step can flip the view's logits back onto ``x``.

    Args:
        num_ops: operations per image (DuPL: 5).
        magnitude: in [0, 30] (DuPL: 10).

    Example:
        >>> image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
        >>> StrongAugment()(image, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, num_ops: int = 5, magnitude: float = 10.0) -> None:
        if int(num_ops) != num_ops or num_ops < 0:
            raise ValueError(f"num_ops: expected an integer >= 0, got {num_ops}")
        if not 0.0 <= magnitude <= 30.0:
            raise ValueError(f"magnitude: expected a value in [0, 30], got {magnitude}")
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude})"

    def value(self, name: str) -> float:
        """The magnitude of operation ``name`` (DuPL's ``m / 30 * (max - min) + min``)."""
        low, high = {op: (lo, hi) for op, lo, hi in _OPS}[name]
        return self.magnitude / 30.0 * (high - low) + low

    def ops(self, generator: torch.Generator | None = None) -> list[str]:
        """The names of the operations one call applies, drawn with replacement."""
        draws = torch.randint(len(_OPS), (self.num_ops,), generator=generator).tolist()
        return [_OPS[i][0] for i in draws]

    def __call__(
        self, image: Image.Image | torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The perturbed image, (3, H, W) uint8, of an RGB PIL image or a (3, H, W) uint8 tensor."""
        if isinstance(image, Image.Image):
            image = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        rgb = torch.is_tensor(image) and image.dim() == 3 and len(image) == 3
        if not rgb or image.dtype != torch.uint8:
            raise ValueError("image: expected an RGB PIL image or a (3, H, W) uint8 tensor")
        for name in self.ops(generator):
            value = self.value(name)
            if name == "autocontrast":
                image = TF.autocontrast(image)
            elif name == "equalize":
                image = TF.equalize(image)
            elif name == "posterize":
                image = TF.posterize(image, max(1, int(value)))
            elif name == "color":
                image = TF.adjust_saturation(image, value)
            elif name == "contrast":
                image = TF.adjust_contrast(image, value)
            elif name == "brightness":
                image = TF.adjust_brightness(image, value)
            else:
                image = TF.adjust_sharpness(image, value)
        return image
