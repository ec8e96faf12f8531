"""Key masks, key-masked attention and the key-masked ViT wrapper (paper Sec. III-C)."""

from mcc.attention.key_mask import ScaledBernoulliKeyMask
from mcc.attention.masked_attention import KeyMaskedAttention
from mcc.attention.vit import KeyMaskedViT, ViTTokens, patch_vit

__all__ = ["KeyMaskedAttention", "KeyMaskedViT", "ScaledBernoulliKeyMask", "ViTTokens", "patch_vit"]
