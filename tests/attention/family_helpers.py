"""Tiny timm ViTs of every family patch_vit supports, and a masked reference built from timm's own blocks."""

from __future__ import annotations

import timm
import torch
from timm.models.eva import Eva
from timm.models.vision_transformer import ResPostBlock, VisionTransformer

TINY = dict(depth=2, embed_dim=64, num_heads=2)

# name -> (timm model name or constructor, extra arguments). Every one is shrunk to TINY.
FAMILIES = {
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "vit_reg4": ("vit_base_patch16_reg4_gap_256", {"class_token": True, "global_pool": "token"}),
    "clip_b16": ("vit_base_patch16_clip_224", {}),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {}),
    "eva02": ("eva02_tiny_patch14_224", {}),
    "eva02_clip": ("eva02_base_patch16_clip_224", {}),
    "rope_vit": ("vit_base_patch16_rope_224", {}),
    "rope_mixed": ("vit_base_patch16_rope_mixed_224", {}),
    "rope_ape": ("vit_base_patch16_rope_ape_224", {}),
    "dinov3": ("vit_small_patch16_dinov3", {}),
    "dinov3_qkvb_swiglu": ("vit_small_plus_patch16_dinov3_qkvb", {}),
    "eva_post_norm": (Eva, {"use_post_norm": True, "use_rot_pos_emb": True, "global_pool": "token"}),
    "eva_gqa": (
        Eva,
        {"attn_type": "rope", "qkv_fused": False, "num_kv_heads": 1, "num_heads": 4, "use_rot_pos_emb": True},
    ),
    "vit_res_post": (VisionTransformer, {"block_fn": ResPostBlock}),
    "deit_dynamic": ("deit_tiny_patch16_224", {"dynamic_img_size": True}),
    "eva02_dynamic": ("eva02_tiny_patch14_224", {"dynamic_img_size": True}),
}


def patch_of(name: str) -> int:
    return 14 if name in ("dinov2_reg4", "eva02", "eva02_dynamic") else 16


def build_family(name: str, img_size, **kwargs) -> torch.nn.Module:
    """A randomly initialised tiny model of family ``name``, every parameter non-zero, in eval mode."""
    source, extra = FAMILIES[name]
    options = dict(TINY, img_size=img_size, **{**extra, **kwargs})
    if source in (Eva, VisionTransformer):
        options.setdefault("patch_size", patch_of(name))
        model = source(**options)
    else:
        model = timm.create_model(source, pretrained=False, **options)
    # Random init leaves some tensors at zero (cls/reg tokens, biases, q/v biases) and layer scales at 1e-5,
    # which would hide the blocks; give every one a value that matters.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith(("gamma_1", "gamma_2", "ls1.gamma", "ls2.gamma")):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
            elif param.abs().sum() == 0:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.eval()


def timm_masked_cls(model, images: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Class tokens (B, V, D) of V masked views, from timm's own embedding and blocks.

    The blocks run with timm's non-fused attention (scores = q k^T * scale, softmax) and an additive mask
    that puts -inf on every dropped key column; rotary embeddings are timm's. The model must be built at
    the images' size (or be dynamic).
    """
    batch, views, num_patches = key_mask.shape
    x = model.patch_embed(images)
    rope = None
    if isinstance(model, Eva):
        x, rope = model._pos_embed(x)
    else:
        x = model._pos_embed(x)
    x = model.norm_pre(x).repeat_interleave(views, dim=0)
    rows, tokens, _ = x.shape
    prefix = tokens - num_patches
    dropped = torch.cat([key_mask.new_zeros(rows, prefix), key_mask.reshape(rows, num_patches)], dim=1)
    bias = torch.zeros(rows, 1, 1, tokens, dtype=x.dtype, device=x.device)
    bias = bias.masked_fill(dropped[:, None, None, :], float("-inf"))
    fused = [block.attn.fused_attn for block in model.blocks]
    try:
        for index, block in enumerate(model.blocks):
            block.attn.fused_attn = False
            if rope is None:
                x = block(x, attn_mask=bias)
            else:
                x = block(x, rope=rope[index] if model.rope_mixed else rope, attn_mask=bias)
    finally:
        for block, value in zip(model.blocks, fused):
            block.attn.fused_attn = value
    return model.norm(x)[:, 0].reshape(batch, views, -1)
