"""Multi-head self-attention whose keys can be dropped per sample (paper Eq. 1-3)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KeyMaskedAttention"]


class KeyMaskedAttention(nn.Module):
    """Self-attention with a per-sample boolean key mask, timm-compatible.

    Computes ``softmax(Q K^T / sqrt(d) + M') V`` with ``M' = -inf`` on dropped key columns (paper Eq. 2-3,
    M = 1 on dropped keys), through :func:`torch.nn.functional.scaled_dot_product_attention` with a boolean
    mask, so no large negative constant is needed and bf16/fp16 autocast is safe. A dropped key is invisible
    to every query of its sample in every head; its own row (as a query) is still computed.

    Sub-module names (``qkv``, ``q_norm``, ``k_norm``, ``proj``) and state-dict keys are timm's
    ``Attention`` ones, so timm weights load 1:1.

    Args:
        dim: token dimension D.
        num_heads: attention heads; must divide ``dim``.
        qkv_bias: bias in the qkv projection.
        qk_norm: LayerNorm on queries and keys per head.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
        norm_layer: constructor of the qk-norm layers (timm's ViTs pass ``LayerNorm(eps=1e-6)``).

    Example:
        >>> attn = KeyMaskedAttention(64, num_heads=4)
        >>> x = torch.randn(2, 10, 64)
        >>> key_mask = torch.zeros(2, 10, dtype=torch.bool); key_mask[:, 5:] = True
        >>> attn(x, key_mask).shape
        torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @classmethod
    def from_timm(cls, attn: nn.Module) -> KeyMaskedAttention:
        """Wraps a timm ``Attention`` module, sharing (not copying) its parameters.

        Args:
            attn: a ``timm.models.vision_transformer.Attention`` (or a module with the same layout:
                ``qkv``, ``q_norm``, ``k_norm``, ``proj``, ``num_heads``).

        Returns:
            a :class:`KeyMaskedAttention` whose sub-modules are the very modules of ``attn``.
        """
        missing = [name for name in ("qkv", "proj", "num_heads") if not hasattr(attn, name)]
        if missing:
            raise TypeError(f"attn ({type(attn).__name__}) is not a timm-style Attention: no {missing}")
        if getattr(attn, "gate", None) is not None:
            raise TypeError("attn: gated timm attention is not supported")
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.num_heads = int(attn.num_heads)
        out.head_dim = attn.qkv.out_features // 3 // out.num_heads
        if attn.qkv.out_features != 3 * out.num_heads * out.head_dim:
            raise TypeError("attn: qkv output size is not 3 * num_heads * head_dim")
        out.qkv = attn.qkv
        out.q_norm = _shared(attn, "q_norm", nn.Identity)
        out.k_norm = _shared(attn, "k_norm", nn.Identity)
        out.attn_drop = _shared(attn, "attn_drop", lambda: nn.Dropout(0.0))
        out.norm = _shared(attn, "norm", nn.Identity)
        out.proj = attn.proj
        out.proj_drop = _shared(attn, "proj_drop", lambda: nn.Dropout(0.0))
        return out

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attends with dropped keys removed from every query's softmax.

        Args:
            x: tokens, shape (B, N, D).
            key_mask: dropped keys, bool, shape (B, N), True = dropped; None drops nothing.

        Returns:
            tokens, shape (B, N, D).
        """
        if x.dim() != 3:
            raise ValueError(f"x must have shape (B, N, D), got {tuple(x.shape)}")
        if key_mask is not None:
            if key_mask.dtype != torch.bool:
                raise ValueError(f"key_mask must be a bool tensor (True = dropped), got {key_mask.dtype}")
            if key_mask.device != x.device:
                raise ValueError(f"key_mask is on {key_mask.device} but x is on {x.device}")
            if key_mask.shape != x.shape[:2]:
                raise ValueError(
                    f"key_mask must have shape {tuple(x.shape[:2])} (B, N), got {tuple(key_mask.shape)}"
                )
            if bool(key_mask.all(dim=1).any()):
                raise ValueError("key_mask drops every key of some sample: its softmax would be empty")
        return self.attend(x, key_mask)

    def attend(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        packing: tuple[torch.Tensor, int, int] | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` without input checks (no host sync), for callers that guarantee a kept key.

        Args:
            x: tokens, shape (B, N, D); or, with ``packing``, packed tokens of shape (T, D).
            key_mask: dropped keys, bool, shape (B, N) (with ``packing``: (rows, length)), or None.
            packing: ``(index, rows, length)``: packed token ``t`` sits at flat position ``index[t]`` of a
                (rows, length) padded layout. Per-token layers then run on the T real tokens only and the
                attention core on the padded layout, where ``key_mask`` must drop every padding slot.

        Returns:
            tokens, same shape as ``x``.
        """
        qkv = self.qkv(x)
        if packing is None:
            batch, tokens = x.shape[:2]
        else:
            index, batch, tokens = packing
            qkv = qkv.new_zeros(batch * tokens, qkv.shape[-1]).index_copy(0, index, qkv)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        # SDPA's boolean mask means "may attend": the key mask's complement, broadcast over heads and queries.
        allowed = None if key_mask is None else ~key_mask[:, None, None, :]
        dropout_p = self.attn_drop.p if self.attn_drop.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        if packing is not None:
            out = out.reshape(batch * tokens, -1).index_select(0, packing[0])
        return self.proj_drop(self.proj(self.norm(out)))


def _shared(attn: nn.Module, name: str, default) -> nn.Module:
    module = getattr(attn, name, None)
    return default() if module is None else module
