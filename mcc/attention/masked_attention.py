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
    ``Attention`` ones, so timm weights load 1:1. :meth:`from_timm` also wraps timm's ``EvaAttention`` and
    ``AttentionRope`` (EVA-02, DINOv3, RoPE ViTs): fused ``qkv`` with separate ``q_bias``/``v_bias`` (the key
    bias is timm's constant zero), or separate ``q_proj``/``k_proj``/``v_proj`` (also with fewer key/value
    heads, grouped-query attention), the output norm ``norm`` (scale-norm), the sigmoid ``gate`` and rotary
    position embeddings (``rope`` in :meth:`attend`), which rotate every token after the first
    ``num_prefix_tokens`` as timm does.

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
        self._set_variant_defaults()

    def _set_variant_defaults(self) -> None:
        # Plain attributes (not registered): the standalone layer keeps timm Attention's state-dict keys.
        self.num_kv_heads = self.num_heads
        self.q_proj = self.k_proj = self.v_proj = None
        self.q_bias = self.v_bias = None
        self.qkv_bias_separate = False
        self.gate = None
        self.num_prefix_tokens = 0
        self.rotate_half = False
        self._source = None

    @classmethod
    def from_timm(cls, attn: nn.Module) -> KeyMaskedAttention:
        """Wraps a timm attention module, sharing (not copying) its parameters.

        Args:
            attn: a ``timm.models.vision_transformer.Attention``, ``timm.models.eva.EvaAttention`` or
                ``timm.layers.AttentionRope`` (or a subclass).

        Returns:
            a :class:`KeyMaskedAttention` whose sub-modules are the very modules of ``attn``.

        Raises:
            TypeError: ``attn`` is another kind of module, or a variant whose computation differs.
        """
        _check_timm_attention(attn)
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.num_heads = int(attn.num_heads)
        out._set_variant_defaults()
        out.num_kv_heads = int(getattr(attn, "num_kv_heads", None) or out.num_heads)
        if getattr(attn, "qkv", None) is not None:
            out.head_dim = attn.qkv.out_features // 3 // out.num_heads
            if attn.qkv.out_features != 3 * out.num_heads * out.head_dim or out.num_kv_heads != out.num_heads:
                raise TypeError("attn: qkv output size is not 3 * num_heads * head_dim")
            out.qkv = attn.qkv
            if getattr(attn, "q_bias", None) is not None:
                out.q_bias, out.v_bias = attn.q_bias, attn.v_bias
                out.qkv_bias_separate = bool(getattr(attn, "qkv_bias_separate", False))
        else:
            out.qkv = None
            out.head_dim = attn.q_proj.out_features // out.num_heads
            out.q_proj, out.k_proj, out.v_proj = attn.q_proj, attn.k_proj, attn.v_proj
            sizes = {"q_proj": out.num_heads, "k_proj": out.num_kv_heads, "v_proj": out.num_kv_heads}
            for name, heads in sizes.items():
                if getattr(attn, name).out_features != heads * out.head_dim:
                    raise TypeError(f"attn: {name} output size is not {heads} heads * {out.head_dim}")
            if out.num_heads % out.num_kv_heads:
                raise TypeError("attn: num_heads is not a multiple of num_kv_heads")
        out.q_norm = _shared(attn, "q_norm", nn.Identity)
        out.k_norm = _shared(attn, "k_norm", nn.Identity)
        out.attn_drop = _shared(attn, "attn_drop", lambda: nn.Dropout(0.0))
        out.norm = _shared(attn, "norm", nn.Identity)
        out.gate = getattr(attn, "gate", None)
        out.proj = attn.proj
        out.proj_drop = _shared(attn, "proj_drop", lambda: nn.Dropout(0.0))
        out.num_prefix_tokens = int(getattr(attn, "num_prefix_tokens", 0))
        out.rotate_half = bool(getattr(attn, "rotate_half", False))
        # The key bias of EvaAttention is a (non-persistent) buffer: read it from the source module at call
        # time, because .to()/.double() replace buffer tensors (parameters are updated in place).
        out._source = (attn,)
        return out

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | None = None, *, rope: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attends with dropped keys removed from every query's softmax.

        Args:
            x: tokens, shape (B, N, D).
            key_mask: dropped keys, bool, shape (B, N), True = dropped; None drops nothing.
            rope: rotary position embedding (timm's concatenated sin/cos layout) of the tokens after the
                first ``num_prefix_tokens``: (N - n_prefix, 2 * head_dim), or any shape that broadcasts to
                (B, heads, N - n_prefix, 2 * head_dim); None = no rotation.

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
        if rope is not None and rope.shape[-2] != x.shape[1] - self.num_prefix_tokens:
            raise ValueError(
                f"rope must cover the {x.shape[1] - self.num_prefix_tokens} tokens after the "
                f"{self.num_prefix_tokens} prefix tokens, got shape {tuple(rope.shape)}"
            )
        return self.attend(x, key_mask, rope=rope)

    def attend(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        packing: tuple | None = None,
        rope: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` without input checks (no host sync), for callers that guarantee a kept key.

        Args:
            x: tokens, shape (B, N, D); or, with ``packing``, packed tokens of shape (T, D).
            key_mask: dropped keys, bool, shape (B, N) (with ``packing``: (rows, length)), or None.
            packing: ``(index, rows, length)``: packed token ``t`` sits at flat position ``index[t]`` of a
                (rows, length) padded layout, row by row. Per-token layers then run on the T real tokens
                only and the attention core on the padded layout, where ``key_mask`` must drop every
                padding slot. ``(index, rows, length, sizes)``, with ``sizes`` the number of real tokens
                of each row (Python ints): the core runs on each row's own tokens instead (no padding,
                no mask; faster on the CPU, where the padding would cost its share of the work).
            rope: rotary embedding of the (padded-layout) tokens after the prefix, see :meth:`forward`.

        Returns:
            tokens, same shape as ``x``.
        """
        qkv = self._project(x)
        sizes = _row_sizes(packing)
        if sizes is not None:
            return self._output(self._core_by_rows(qkv, sizes, rope, first_only=False), x)
        q, k, v = self._padded_heads(qkv, x, packing, rope)
        batch, tokens = q.shape[0], q.shape[2]
        out = self._core(q, k, v, key_mask).transpose(1, 2).reshape(batch, tokens, -1)
        if packing is not None:
            out = out.reshape(batch * tokens, -1).index_select(0, packing[0])
        return self._output(out, x)

    def attend_first(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None,
        packing: tuple | None = None,
        rope: torch.Tensor | None = None,
        first: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The output of :meth:`attend` at the first token of each sequence only (its class token).

        Keys and values are every token's, the query only the first token's, so the result is the first
        row of :meth:`attend`'s (up to float rounding) at about ``1 / N`` of the attention cost; the
        projections after the core run on that row alone.

        Args:
            x, key_mask, packing, rope: as in :meth:`attend`.
            first: with ``packing``, the packed index of each row's first token, (rows,).

        Returns:
            (B, D); with ``packing``, (rows, D).
        """
        qkv = self._project(x)
        sizes = _row_sizes(packing)
        if sizes is not None:
            out = self._core_by_rows(qkv, sizes, rope, first_only=True)
        else:
            q, k, v = self._padded_heads(qkv, x, packing, rope)
            out = self._core(q[:, :, :1], k, v, key_mask).flatten(1)  # (B, heads * head_dim)
        return self._output(out, x[:, 0] if packing is None else x.index_select(0, first))

    def _padded_heads(self, qkv, x, packing, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_heads` of the (B, N) sequences, or with ``packing`` of its padded (rows, length) layout
        (padding slots zero)."""
        if packing is None:
            batch, tokens = x.shape[:2]
        else:
            index, batch, tokens = packing[:3]
            qkv = qkv.new_zeros(batch * tokens, qkv.shape[-1]).index_copy(0, index, qkv)
        return self._heads(qkv.reshape(batch, tokens, -1), rope)

    def _core_by_rows(self, qkv, sizes, rope, first_only: bool) -> torch.Tensor:
        """The attention core of each packed row on its own tokens: (T, heads * head_dim), or with
        ``first_only`` the output at each row's first token, (rows, heads * head_dim)."""
        out = []
        for row, chunk in enumerate(qkv.split(sizes)):
            row_rope = None if rope is None else rope[row : row + 1, :, : len(chunk) - self.num_prefix_tokens]
            q, k, v = self._heads(chunk[None], row_rope)
            if first_only:
                q = q[:, :, :1]
            out.append(self._core(q, k, v, None).transpose(1, 2).reshape(q.shape[2], -1))
        return torch.cat(out)

    def _heads(self, qkv: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, heads, N, head_dim), normed and rotated, of projections (B, N, *)."""
        batch, tokens = qkv.shape[:2]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = self._rotate(q, rope).type_as(v), self._rotate(k, rope).type_as(v)
        if self.num_kv_heads != self.num_heads:
            # Grouped-query attention: head h uses key/value head h // groups (timm's order), after rotation.
            groups = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return q, k, v

    def _core(self, q, k, v, key_mask) -> torch.Tensor:
        """``softmax(Q K^T / sqrt(d) + M') V`` (B, heads, queries, head_dim) for a (B, N) key mask or None."""
        # SDPA's boolean mask means "may attend": the key mask's complement, broadcast over heads and queries.
        allowed = None if key_mask is None else ~key_mask[:, None, None, :]
        dropout_p = self.attn_drop.p if self.attn_drop.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)

    def _output(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Output norm, gate (on the attention's input ``x`` at the same tokens) and projection."""
        out = self.norm(out)
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values of every token, concatenated on the last dimension (timm's arithmetic)."""
        if self.qkv is None:
            return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        if self.q_bias is None:
            return self.qkv(x)
        k_bias = getattr(self._source[0], "k_bias", None) if self._source else None
        if k_bias is None:
            k_bias = torch.zeros_like(self.q_bias)
        bias = torch.cat((self.q_bias, k_bias, self.v_bias))
        if self.qkv_bias_separate:
            return self.qkv(x) + bias
        return F.linear(x, self.qkv.weight, bias)

    def _rotate(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        from timm.layers import apply_rot_embed_cat

        n_prefix = self.num_prefix_tokens
        rotated = apply_rot_embed_cat(x[:, :, n_prefix:], rope, half=self.rotate_half)
        return torch.cat([x[:, :, :n_prefix], rotated], dim=2)


def _check_timm_attention(attn: nn.Module) -> None:
    from timm.layers import Attention, AttentionRope
    from timm.models.eva import EvaAttention

    kinds = (Attention, AttentionRope, EvaAttention)
    if not isinstance(attn, kinds):
        has_layout = hasattr(attn, "proj") and hasattr(attn, "num_heads")
        detail = "an attention computation this library does not reproduce" if has_layout else "no qkv/proj"
        raise TypeError(
            f"attn ({type(attn).__name__}) is not a timm-style Attention (timm's Attention, EvaAttention "
            f"or AttentionRope): {detail}"
        )
    if getattr(attn, "qkv", None) is None and getattr(attn, "q_proj", None) is None:
        raise TypeError(f"attn ({type(attn).__name__}) is not a timm-style Attention: no qkv or q_proj")


def _row_sizes(packing) -> tuple[int, ...] | None:
    """The per-row token counts of a packing that asks for the row-by-row attention core, else None."""
    return packing[3] if packing is not None and len(packing) > 3 else None


def _shared(attn: nn.Module, name: str, default) -> nn.Module:
    module = getattr(attn, name, None)
    return default() if module is None else module
