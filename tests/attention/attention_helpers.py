"""Small timm ViTs and an independent explicit-softmax reference for the attention tests."""

from __future__ import annotations

import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

TINY = dict(patch_size=16, embed_dim=64, depth=3, num_heads=4)


def build(name: str, img_size, **kwargs) -> torch.nn.Module:
    """A randomly initialised ViT of one of the kinds the library promises to support."""
    if name == "test_vit":
        model = timm.create_model("test_vit", pretrained=False, img_size=img_size, **kwargs)
    elif name == "deit_tiny":
        model = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=img_size, **kwargs)
    elif name == "registers":
        model = VisionTransformer(img_size=img_size, reg_tokens=4, no_embed_class=True, **TINY, **kwargs)
    elif name == "registers_embed_class":
        model = VisionTransformer(img_size=img_size, reg_tokens=2, **TINY, **kwargs)
    elif name == "distilled":
        model = VisionTransformerDistilled(img_size=img_size, **TINY, **kwargs)
    else:
        raise KeyError(name)
    # Random init leaves some tensors at zero (e.g. cls/reg tokens); give every parameter a value.
    with torch.no_grad():
        for param in model.parameters():
            if param.abs().sum() == 0:
                param.normal_(0, 0.02)
    return model.eval()


def explicit_masked_cls(model, images: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Class tokens (B, V, D) of V masked views, written out with an explicit -inf softmax.

    Uses timm's own embedding (the model must be built at the images' size) and spells every block out:
    scores = q k^T * scale, dropped columns set to -inf, softmax, @ v.
    """
    batch, views, num_patches = key_mask.shape
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    x = x.repeat_interleave(views, dim=0)
    rows, tokens, dim = x.shape
    prefix = tokens - num_patches
    dropped = torch.cat([key_mask.new_zeros(rows, prefix), key_mask.reshape(rows, num_patches)], dim=1)
    for block in model.blocks:
        attn = block.attn
        heads = attn.num_heads
        qkv = attn.qkv(block.norm1(x)).reshape(rows, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        scores = (q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5
        scores = scores.masked_fill(dropped[:, None, None, :], float("-inf"))
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(rows, tokens, dim)
        x = x + block.ls1(attn.proj(attn.norm(y)))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.norm(x)[:, 0].reshape(batch, views, dim)


def mixed_ratio_mask(batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(B, 4, h*w) masks: view 0 keeps all, view 1 drops ~half, view 2 ~95 %, view 3 drops every patch."""
    from mcc.attention import ScaledBernoulliKeyMask

    views = [
        ScaledBernoulliKeyMask(r, scale=4)(batch, grid, 1, generator=generator) for r in (0.0, 0.5, 0.95)
    ]
    views.append(torch.ones(batch, 1, grid[0] * grid[1], dtype=torch.bool))
    return torch.cat(views, dim=1)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).detach().abs().max() / scale.detach())
