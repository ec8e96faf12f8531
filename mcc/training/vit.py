"""Building the timm ViT encoder: timm names or backbone presets, offline from a local weights file."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["BACKBONE_PRESETS", "BackbonePreset", "build_vit"]


@dataclass(frozen=True)
class BackbonePreset:
    """A named encoder setting: which timm weights, at which crop size, built how.

    Attributes:
        name: the preset name :func:`build_vit` accepts (e.g. ``"deit-b16-in1k"``).
        timm_name: timm model name with its pretrained tag (e.g. ``"deit_base_patch16_224.fb_in1k"``).
        description: what the weights are.
        used_by: the WSSS papers that report this backbone.
        crop_size: training crop (a multiple of the patch size); ``build_vit`` passes it to timm as
            ``img_size`` unless it is given another one, so timm resamples the pretrained position
            embedding to this grid once, at load time.
        options: further :func:`timm.create_model` arguments (e.g. ``dynamic_img_size=True``: the model
            resamples its position embedding itself at other sizes, and :func:`~mcc.patch_vit` does it
            the same way).
        final_norm_from_fc_norm: apply the final LayerNorm, which this checkpoint keeps as ``fc_norm``
            after average pooling, to every token as ``norm`` instead (MCC needs normalised tokens).
    """

    name: str
    timm_name: str
    description: str
    used_by: str
    crop_size: int = 448
    options: dict[str, Any] = field(default_factory=dict)
    final_norm_from_fc_norm: bool = False


BACKBONE_PRESETS: dict[str, BackbonePreset] = {
    preset.name: preset
    for preset in (
        BackbonePreset(
            "deit-b16-in1k",
            "deit_base_patch16_224.fb_in1k",
            "DeiT-B/16, supervised on ImageNet-1k (the MCC paper's encoder; the released preset)",
            "MCC, ToCo, DuPL",
        ),
        BackbonePreset(
            "vit-b16-in21k",
            "vit_base_patch16_224.augreg_in21k_ft_in1k",
            "ViT-B/16, AugReg ImageNet-21k pre-training fine-tuned on ImageNet-1k (the weights timm's "
            "plain `vit_base_patch16_224` name loads)",
            "ToCo (ImageNet-21k setting), SeCo, CoSA, MoRe",
        ),
        BackbonePreset(
            "clip-b16",
            "vit_base_patch16_clip_224.openai",
            "OpenAI CLIP ViT-B/16 image tower (pre-norm `norm_pre`; CLIP pixel mean/std)",
            "CLIP-based WSSS (e.g. CLIP-ES, WeCLIP use the frozen CLIP ViT-B/16)",
            options={"dynamic_img_size": True},
        ),
        BackbonePreset(
            "dinov2-reg-b14",
            "vit_base_patch14_reg4_dinov2.lvd142m",
            "DINOv2 ViT-B/14 with 4 register tokens, self-supervised on LVD-142M",
            "-",
            options={"dynamic_img_size": True},
        ),
        BackbonePreset(
            "eva02-b14",
            "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",
            "EVA-02 B/14 (rotary embeddings, SwiGLU), MIM on ImageNet-22k, fine-tuned on 22k then 1k at 448",
            "-",
            options={"dynamic_img_size": True},
            final_norm_from_fc_norm=True,
        ),
        BackbonePreset(
            "dinov3-b16",
            "vit_base_patch16_dinov3.lvd1689m",
            "DINOv3 ViT-B/16 (rotary embeddings, 4 registers), distilled, self-supervised on LVD-1689M",
            "-",
        ),
    )
}
"""The backbone presets :func:`build_vit` (and ``mcc-train-voc --model``) accept, by name.

Each is a :class:`BackbonePreset`. The pixel mean/std a preset's weights expect is the built model's
``pretrained_cfg["mean"/"std"]`` (CLIP's for ``clip-b16`` and ``eva02-b14``, 0.5 for ``vit-b16-in21k``,
ImageNet's for the others);
the training command normalises its data with them and records them in the checkpoint. See
docs/backbones.md for the table of presets and the papers that use them.
"""


def build_vit(
    name: str = "deit_base_patch16_224",
    pretrained: bool = False,
    pretrained_file: str | os.PathLike | None = None,
    img_size: int | tuple[int, int] | None = None,
    **kwargs,
) -> nn.Module:
    """A timm ViT for :class:`~mcc.MCCNet`, from a timm name or a backbone preset.

    Args:
        name: a preset of :data:`BACKBONE_PRESETS` (``deit-b16-in1k``, ``vit-b16-in21k``, ``clip-b16``,
            ``dinov2-reg-b14``, ``eva02-b14``, ``dinov3-b16``; see docs/backbones.md) or any timm model
            name, optionally with a pretrained tag (the paper: ``deit_base_patch16_224``, ImageNet-1k).
        pretrained: load pretrained weights. From ``pretrained_file`` when given (no network access),
            else timm's usual source (the Hugging Face hub; set ``HF_HUB_OFFLINE=1`` to forbid downloads).
        pretrained_file: local weights file (``.pth``, ``.bin`` or ``.safetensors``) of the same model;
            implies ``pretrained``. timm resamples its position embedding to ``img_size``.
        img_size: training crop size, a multiple of the patch size (the position embedding is resampled
            to any other size at run time). None: the preset's crop size, else 448.
        **kwargs: passed to :func:`timm.create_model` (e.g. ``drop_path_rate``); they override a preset's.

    Returns:
        the timm model, without classification head (``num_classes=0``). ``model.pretrained_cfg`` holds
        the pixel ``mean``/``std`` its weights expect (CLIP and EVA-02 differ from ImageNet's).

    Raises:
        FileNotFoundError: ``pretrained_file`` does not exist.
        ValueError: ``name`` is neither a preset nor a timm model, or ``img_size`` is not a multiple of
            the patch size.
        ConnectionError: ``pretrained=True`` without ``pretrained_file`` and the weights can be neither
            downloaded (offline, ``HF_HUB_OFFLINE=1``, hub unreachable) nor found in the local cache.
    """
    import timm

    preset = BACKBONE_PRESETS.get(name)
    timm_name = preset.timm_name if preset else name
    if not timm.is_model(timm_name):
        presets = ", ".join(BACKBONE_PRESETS)
        raise ValueError(f"name: {name!r} is not a timm model or a backbone preset ({presets})")
    if img_size is None:
        img_size = preset.crop_size if preset else 448
    options = dict(preset.options if preset else {})
    options.update(kwargs, img_size=img_size, num_classes=0)
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file not found: {path}")
        try:
            with _model_options_checked(name, kwargs):
                model = timm.create_model(
                    timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **options
                )
        except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError) as error:  # torch/timm by kind
            from mcc.training.checkpoint import _load_failure

            raise ValueError(
                f"pretrained_file {path}: not loadable as weights of {name!r}: it {_load_failure(error)}"
            ) from error
    else:
        try:
            with _model_options_checked(name, kwargs):
                model = timm.create_model(timm_name, pretrained=pretrained, **options)
        except (
            OSError
        ) as error:  # hub unreachable / offline and not cached (huggingface_hub errors are OSErrors)
            if not pretrained:
                raise
            raise ConnectionError(
                f"cannot download the pretrained weights of {timm_name!r} (offline, HF_HUB_OFFLINE=1 or the "
                "hub is unreachable, and they are not cached): pass pretrained_file=<local weights file> "
                "(command line: --pretrained-file PATH) or pretrained=False (--pretrained false)"
            ) from error
    _check_img_size(model, img_size)
    if preset is not None and preset.final_norm_from_fc_norm:
        _final_norm_per_token(model)
    return model


@contextlib.contextmanager
def _model_options_checked(name: str, kwargs: dict):
    """Turns timm's ``TypeError`` for a keyword the model does not take into a ``ValueError`` saying why.

    A keyword of ``kwargs`` the model's class lacks is a typo of the caller; ``img_size`` (which every
    ViT takes) lacking means the model is not a ViT.
    """
    try:
        yield
    except TypeError as error:
        match = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if match is None:
            raise
        keyword = match.group(1)
        if keyword in kwargs:
            raise ValueError(
                f"{keyword}={kwargs[keyword]!r}: not an option of timm model {name!r} ({error})"
            ) from error
        raise ValueError(
            f"name: {name!r} is not a ViT-family model (its class takes no {keyword!r}): MCC needs a "
            "timm vision transformer with patch_embed and blocks, e.g. a backbone preset "
            f"({', '.join(BACKBONE_PRESETS)}) or a name of timm.list_models('vit_*'), 'deit_*', 'eva02_*'"
        ) from error


def _check_img_size(model: nn.Module, img_size) -> None:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if any(s % p for s, p in zip(size, patch)):
        raise ValueError(f"img_size {img_size} is not a multiple of the model's patch size {tuple(patch)}")


def _final_norm_per_token(model: nn.Module) -> None:
    """Moves a pooled-feature ``fc_norm`` to the per-token ``norm`` (which is an Identity there)."""
    fc_norm = getattr(model, "fc_norm", None)
    if isinstance(getattr(model, "norm", None), nn.Identity) and not isinstance(fc_norm, nn.Identity | None):
        model.norm, model.fc_norm = fc_norm, nn.Identity()
