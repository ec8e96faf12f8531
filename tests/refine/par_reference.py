"""Plain PAR and pseudo-label references: the published computation, written for clarity, not speed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _unfold_neighbours(x: torch.Tensor, dilations) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 8 * len(dilations), H, W): the 3x3 ring of every dilation, replicate padded."""
    batch, channels, height, width = x.shape
    rings = []
    for d in dilations:
        cols = F.unfold(F.pad(x, [d] * 4, mode="replicate"), kernel_size=3, dilation=d)
        cols = cols.view(batch, channels, 9, height, width)
        rings.append(cols[:, :, [0, 1, 2, 3, 5, 6, 7, 8]])  # drop the centre
    return torch.cat(rings, dim=2)


def reference_affinity(images, dilations=(1, 2, 4, 8, 12, 24), w1=0.3, w2=0.01) -> torch.Tensor:
    neighbours = _unfold_neighbours(images, dilations)  # (B, 3, K, H, W)
    std = neighbours.std(dim=2, keepdim=True)
    logits = (-(((neighbours - images.unsqueeze(2)).abs() / (std + 1e-8) / w1) ** 2)).mean(1)
    distance = torch.tensor(
        [d * (math.sqrt(2) if k in (0, 2, 5, 7) else 1.0) for d in dilations for k in range(8)],
        dtype=images.dtype,
    )
    position = (-((distance / (distance.std() + 1e-8) / w1) ** 2)).softmax(0)
    return logits.softmax(1) + w2 * position[:, None, None]


def reference_par(images, masks, dilations=(1, 2, 4, 8, 12, 24), num_iter=10, w1=0.3, w2=0.01):
    masks = F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=True)
    affinity = reference_affinity(images, dilations, w1, w2)
    for _ in range(num_iter):
        masks = (_unfold_neighbours(masks, dilations) * affinity.unsqueeze(1)).sum(2)
    return masks


def reference_refine(par, images, cams, cls_label, high_thre=0.7, low_thre=0.25, img_box=None, down_scale=2):
    """Per-image loop with explicit selection of background + present classes (the published form)."""
    ignore_index = 255
    batch, _, height, width = images.shape
    small = (height // down_scale, width // down_scale)
    small_images = F.interpolate(images, size=small, mode="bilinear", align_corners=False)
    label = torch.full((batch, height, width), ignore_index, dtype=torch.long)
    for i in range(batch):
        keep = torch.cat([torch.zeros(1, dtype=torch.long), cls_label[i].nonzero()[:, 0] + 1])
        results = []
        for level in (high_thre, low_thre):
            maps = torch.cat([torch.full_like(cams[i : i + 1, :1], level), cams[i : i + 1]], dim=1)
            maps = F.interpolate(maps, size=small, mode="bilinear", align_corners=False)
            probs = maps[:, keep].softmax(1)
            refined = par(small_images[i : i + 1], probs)
            refined = F.interpolate(refined, size=(height, width), mode="bilinear", align_corners=False)
            results.append(keep[refined.argmax(1)][0])
        high, low = results
        one = high.clone()
        one[high == 0] = ignore_index
        one[(high + low) == 0] = 0
        y0, y1, x0, x1 = (0, height, 0, width) if img_box is None else [int(v) for v in img_box[i]]
        label[i, y0:y1, x0:x1] = one[y0:y1, x0:x1]
    return label
