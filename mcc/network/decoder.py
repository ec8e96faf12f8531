"""The LargeFOV segmentation head (DeepLab v1), as used by AFA, ToCo and MCC."""

from __future__ import annotations

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

    Shapes:
        (B, D, h, w) -> (B, num_classes, h, w).
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int = 512, dilation: int = 5) -> None:
        super().__init__()
        self.conv6 = nn.Conv2d(in_dim, dim, 3, padding=dilation, dilation=dilation)
        self.conv7 = nn.Conv2d(dim, dim, 3, padding=dilation, dilation=dilation)
        self.classifier = nn.Conv2d(dim, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        for conv in (self.conv6, self.conv7, self.classifier):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv6(x))
        x = self.relu(self.conv7(x))
        return self.classifier(x)
