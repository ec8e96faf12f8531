"""Building the timm ViT encoder, offline from a local weights file when given one."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

__all__ = ["build_vit"]


def build_vit(
    name: str = "deit_base_patch16_224",
    pretrained: bool = False,
    pretrained_file: str | os.PathLike | None = None,
    img_size: int | tuple[int, int] = 448,
    **kwargs,
) -> nn.Module:
    """A timm ViT for :class:`~mcc.MCCNet`, with its position embedding sized for ``img_size``.

    Args:
        name: timm model name (the paper: ``deit_base_patch16_224``, ImageNet-1k).
        pretrained: load pretrained weights. From ``pretrained_file`` when given (no network access),
            else timm's usual source (the Hugging Face hub; set ``HF_HUB_OFFLINE=1`` to forbid downloads).
        pretrained_file: local weights file (``.pth``, ``.bin`` or ``.safetensors``) of the same model;
            implies ``pretrained``. timm resamples its position embedding to ``img_size``.
        img_size: training crop size (the position embedding is resampled to any other size at run time).
        **kwargs: passed to :func:`timm.create_model` (e.g. ``drop_path_rate``).

    Returns:
        the timm model, without classification head (``num_classes=0``).

    Raises:
        FileNotFoundError: ``pretrained_file`` does not exist.
        ValueError: ``name`` is not a timm model.
    """
    import timm

    if not timm.is_model(name):
        raise ValueError(f"name: {name!r} is not a timm model")
    options = dict(kwargs, img_size=img_size, num_classes=0)
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file not found: {path}")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **options)
    return timm.create_model(name, pretrained=pretrained, **options)
