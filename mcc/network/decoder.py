"""The LargeFOV segmentation head (DeepLab v1), as used by AFA, ToCo and MCC."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["LargeFOV"]


class LargeFOV(nn.Module):
    """conv3x3(dilation d) - ReLU - conv3x3(dilation d) - ReLU - conv1x1 to class logits.

    Args:
        in_dim: channels of the token map D.
        num_classes: output classes, background included (VOC: 21).
        dim: hidden width (published: 512).
        dilation: dilation of both 3x3 convolutions (published: 5).
        bias: give the convolutions biases (the published head has none: ``bias=False``).
        init: "kaiming" re-initialises the weights Kaiming-normal (fan-out) and the biases to 0; "default"
            keeps PyTorch's default convolution initialisation, as the published head (whose own
            ``_init_weights`` is never called). :class:`~mcc.MCCNet` builds it from
            ``MCCConfig.decoder_bias`` / ``decoder_init`` (released: False / "default").

    Shapes:
        (B, D, h, w) -> (B, num_classes, h, w).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        dim: int = 512,
        dilation: int = 5,
        bias: bool = True,
        init: Literal["kaiming", "default"] = "kaiming",
    ) -> None:
        super().__init__()
        if init not in ("kaiming", "default"):
            raise ValueError(f"init must be 'kaiming' or 'default', got {init!r}")
        self.conv6 = nn.Conv2d(in_dim, dim, 3, padding=dilation, dilation=dilation, bias=bias)
        self.conv7 = nn.Conv2d(dim, dim, 3, padding=dilation, dilation=dilation, bias=bias)
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        if init == "kaiming":
            for conv in (self.conv6, self.conv7, self.classifier):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv6(x))
        x = self.relu(self.conv7(x))
        return self.classifier(x)
