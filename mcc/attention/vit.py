"""A timm Vision Transformer whose attention keys can be dropped per view, exactly and fast."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mcc.attention.masked_attention import KeyMaskedAttention

__all__ = ["KeyMaskedViT", "ViTTokens", "patch_vit"]

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


class ViTTokens(NamedTuple):
    """What :class:`KeyMaskedViT` returns.

    Attributes:
        cls: class token after the final norm, (B, D); (B, V, D) for a (B, V, h*w) key mask.
        patches: final patch tokens after the final norm, (B, D, h, w); None with a key mask.
        aux: patch tokens after block ``aux_layer``, un-normed, (B, D, h, w); None with a key mask.
        grid: the token grid (h, w).
    """

    cls: torch.Tensor
    patches: torch.Tensor | None
    aux: torch.Tensor | None
    grid: tuple[int, int]


class KeyMaskedViT(nn.Module):
    """Runs a timm ``VisionTransformer`` or ``Eva`` with per-view key masks (build it with :func:`patch_vit`).

    The wrapper owns the timm model as ``self.vit``, so its state-dict keys are timm's under a ``vit.``
    prefix; it adds no parameters. Its attention layers are :class:`KeyMaskedAttention` views of timm's
    (shared parameters), and it runs its own loop over timm's blocks, so it does not depend on timm's
    ``attn_mask`` plumbing.

    Without a key mask it returns the class token, the final patch tokens (= timm's ``forward_features``)
    and the patch tokens after block ``aux_layer``. With a key mask it computes the masked class tokens.
    A dropped key is dropped in every block, so a dropped token can never influence the class token (nor
    any kept token): the default **token-dropping path** feeds only the prefix tokens and the kept patch
    tokens of each view to the blocks. Per-token layers (norms, qkv, MLP, projections) run on the packed
    real tokens of all views; the attention core runs on each view's own tokens on the CPU, and on an
    accelerator pads the views to the longest one with a key-padding mask (one kernel). Only the class
    tokens leave this path, so its last block computes them alone (queries, MLP and residuals of the
    class token; keys and values of every kept token). ``drop_tokens=False`` runs the **plain path**
    instead: every view's full sequence with masked attention in every block (the published
    computation); both agree up to float rounding.

    Rotary position embeddings (timm's ``Eva`` class: EVA-02, DINOv3, RoPE ViTs) are those timm computes for
    the token grid; on the token-dropping path each view's kept tokens get the rotations of their own grid
    positions (gathered), and prefix tokens get none, as in timm.

    Position embeddings at other grid sizes follow the model. A ``dynamic_img_size`` model resamples its
    absolute position embedding itself in ``forward_features`` (timm's ``resample_abs_pos_embed``: bicubic
    with antialias); the wrapper calls that same function, so its unmasked output equals
    ``forward_features`` at every size, whatever ``antialias_pos_embed`` says. A fixed-size model cannot run
    at other sizes in timm; the wrapper resamples its embedding bicubically with
    ``antialias=antialias_pos_embed`` (False = the published MCC code, which uses fixed-size DeiT-B).

    Args:
        model: a timm ``VisionTransformer`` (including distilled DeiT and register-token models) or ``Eva``
            (EVA-02, DINOv3, RoPE ViTs), with a class token.
        aux_layer: index into the list of block outputs, Python-style (-3 = the 10th of 12 blocks).
        antialias_pos_embed: antialias the bicubic position-embedding resampling of a fixed-size model
            (False matches the published MCC code). ``dynamic_img_size`` models resample as timm does.
    """

    def __init__(self, model: nn.Module, aux_layer: int = -3, antialias_pos_embed: bool = False) -> None:
        super().__init__()
        _check_timm_vit(model)
        depth = len(model.blocks)
        if not -depth <= aux_layer < depth:
            raise ValueError(f"aux_layer must index one of the {depth} blocks, got {aux_layer}")
        self.vit = model
        self.aux_layer = aux_layer
        self.aux_index = aux_layer % depth
        self.antialias_pos_embed = antialias_pos_embed
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.embed_dim = int(model.embed_dim)
        self.patch_size = tuple(int(p) for p in model.patch_embed.patch_size)
        # A plain tuple, not a ModuleList: the sub-modules already belong to self.vit (no duplicate keys).
        self._attentions = tuple(KeyMaskedAttention.from_timm(block.attn) for block in model.blocks)
        self._post_norm = tuple(_is_post_norm(block) for block in model.blocks)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    def grid_size(self, images: torch.Tensor) -> tuple[int, int]:
        """Token grid (h, w) of ``images`` (B, 3, H, W)."""
        return images.shape[-2] // self.patch_size[0], images.shape[-1] // self.patch_size[1]

    def forward(
        self, images: torch.Tensor, key_mask: torch.Tensor | None = None, *, drop_tokens: bool = True
    ) -> ViTTokens:
        """Encodes images, optionally with dropped keys.

        Args:
            images: (B, 3, H, W), H and W multiples of the patch size.
            key_mask: dropped patch keys, bool, (B, h*w) or (B, V, h*w) for V masked views of each image;
                True = dropped. Prefix tokens (class, distillation, registers) are never dropped.
            drop_tokens: with a key mask, remove dropped tokens (fast, default) or mask them in every
                block (plain reference path).

        Returns:
            :class:`ViTTokens`. With a key mask, ``cls`` is (B, D) or (B, V, D) like the mask, and
            ``patches`` and ``aux`` are None (on both paths).
        """
        grid = self._check_images(images)
        patches, prefix = self._embed(images, grid)
        rope = self._rope(grid)
        if key_mask is None:
            return self._forward_full(patches, prefix, grid, rope)
        views = self._check_key_mask(key_mask, images, grid)
        if drop_tokens:
            cls = self._forward_dropped(patches, prefix, views, rope)
        else:
            cls = self._forward_masked(patches, prefix, views, rope)
        return ViTTokens(cls.squeeze(1) if key_mask.dim() == 2 else cls, None, None, grid)

    def _forward_partly_class_only(self, images: torch.Tensor, full: int) -> ViTTokens:
        """:meth:`forward` without a key mask, the patch tokens wanted for the first ``full`` images only.

        The last block computes the class token alone for the other images (see :meth:`_block_first`), so
        ``cls`` is (B, D) for all images, ``patches`` and ``aux`` are (full, D, h, w) (None for
        ``full = 0``); each equals :meth:`forward`'s up to float rounding.
        """
        grid = self._check_images(images)
        patches, prefix = self._embed(images, grid)
        rope = self._rope(grid)
        x = self._start(torch.cat([prefix.expand(patches.shape[0], -1, -1), patches], dim=1))
        aux, last = None, self.depth - 1
        for index in range(last):
            x = self._block(index, x, None, rope=self._block_rope(rope, index))
            if index == self.aux_index and full:
                aux = self._to_map(x[:full], grid)
        last_rope = self._block_rope(rope, last)
        cls = []  # the class tokens of the first `full` images, then of the others
        head = None
        if full:
            head = self._block(last, x[:full], None, rope=last_rope)
            if self.aux_index == last:
                aux = self._to_map(head, grid)
            head = self.vit.norm(head)
            cls.append(head[:, 0])
        if full < x.shape[0]:
            cls.append(self.vit.norm(self._block_first(last, x[full:], None, rope=last_rope)))
        patches = None if head is None else self._to_map(head, grid)
        return ViTTokens(torch.cat(cls) if len(cls) > 1 else cls[0], patches, aux, grid)

    # -- input checks -------------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> tuple[int, int]:
        in_chans = self.vit.patch_embed.proj.in_channels
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != in_chans:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must have shape (B, {in_chans}, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor, got {images.dtype}")
        height, width = images.shape[-2:]
        if height % self.patch_size[0] or width % self.patch_size[1] or height == 0 or width == 0:
            raise ValueError(
                f"images: size {height}x{width} is not a positive multiple of the patch size "
                f"{self.patch_size[0]}x{self.patch_size[1]}"
            )
        return self.grid_size(images)

    @staticmethod
    def _check_key_mask(key_mask: torch.Tensor, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        num_patches = grid[0] * grid[1]
        if not torch.is_tensor(key_mask) or key_mask.dtype != torch.bool:
            kind = key_mask.dtype if torch.is_tensor(key_mask) else type(key_mask).__name__
            raise ValueError(f"key_mask must be a bool tensor (True = dropped), got {kind}")
        batch = images.shape[0]
        if key_mask.dim() not in (2, 3) or key_mask.shape[0] != batch or key_mask.shape[-1] != num_patches:
            raise ValueError(
                f"key_mask must have shape (B, h*w) or (B, V, h*w) = ({batch}, [V,] {num_patches}) for a "
                f"{grid[0]}x{grid[1]} token grid, got {tuple(key_mask.shape)}"
            )
        if key_mask.device != images.device:
            raise ValueError(f"key_mask is on {key_mask.device} but images are on {images.device}")
        return key_mask if key_mask.dim() == 3 else key_mask[:, None]

    # -- embedding ----------------------------------------------------------------------------------------

    def _embed(self, images: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (B, P, D) and prefix tokens (1, n_prefix, D), position embeddings added."""
        vit = self.vit
        embed = vit.patch_embed
        # The projection directly, not patch_embed(): timm's fixed-size check would reject other sizes.
        patches = embed.proj(images).flatten(2).transpose(1, 2)
        patches = embed.norm(patches)
        prefix = [vit.cls_token]
        if getattr(vit, "dist_token", None) is not None:
            prefix.append(vit.dist_token)
        if getattr(vit, "reg_token", None) is not None:
            prefix.append(vit.reg_token)
        prefix = torch.cat(prefix, dim=1)
        if getattr(vit, "pos_embed", None) is not None:
            pos = vit.pos_embed
            n_embedded = 0 if vit.no_embed_class else self.num_prefix_tokens
            if getattr(vit, "dynamic_img_size", False):
                # The model's own resampling, so that the output equals timm's forward_features.
                from timm.layers import resample_abs_pos_embed

                pos = resample_abs_pos_embed(
                    pos, new_size=grid, old_size=vit.patch_embed.grid_size, num_prefix_tokens=n_embedded
                )
            if n_embedded:
                prefix = prefix + pos[:, :n_embedded]
                pos = pos[:, n_embedded:]
            if not getattr(vit, "dynamic_img_size", False):
                pos = self._resample_pos_embed(pos, grid)
            patches = patches + pos
        return patches, prefix

    def _rope(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """timm's rotary embedding of the patch tokens of a ``grid``: (h*w, 2 * head_dim), or
        (depth, heads, h*w, 2 * head_dim) for per-block (mixed) rope; None without rope."""
        rope = getattr(self.vit, "rope", None)
        if rope is None:
            return None
        shape = [int(grid[0]), int(grid[1])]
        native = [int(s) for s in self.vit.patch_embed.grid_size] == shape
        # The same calls as timm's Eva._pos_embed at the model's own size (and any size if dynamic).
        if getattr(self.vit, "dynamic_img_size", False) or (native and not hasattr(rope, "feat_shape")):
            return rope.get_embed(shape=shape)
        if native:
            return rope.get_embed()
        # A fixed-size model at another size: the embedding timm builds after model.set_input_size(...).
        if getattr(rope, "_use_cached_embed", False):
            if not hasattr(rope, "_build_embed_cat"):
                raise ValueError(
                    f"model.rope ({type(rope).__name__}) cannot build rotary embeddings for a {grid[0]}x"
                    f"{grid[1]} token grid; create the model with dynamic_img_size=True or at this size"
                )
            augment = rope.training and getattr(rope, "aug_active", False)
            return rope._build_embed_cat(shape, rope.bands, augment=augment)
        return rope.get_embed(shape=shape)

    def _resample_pos_embed(self, pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        old = tuple(int(s) for s in self.vit.patch_embed.grid_size)
        if old == tuple(grid):
            return pos
        dim = pos.shape[-1]
        # float32 at least (interpolation kernels); float64 kept for exact checks.
        work_dtype = torch.float64 if pos.dtype == torch.float64 else torch.float32
        pos = pos.to(work_dtype).reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
        pos = F.interpolate(
            pos, size=grid, mode="bicubic", align_corners=False, antialias=self.antialias_pos_embed
        )
        return pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(self.vit.pos_embed.dtype)

    def _start(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vit.norm_pre(self.vit.pos_drop(tokens))

    # -- the three computations -----------------------------------------------------------------------------

    def _block(self, index: int, x: torch.Tensor, key_mask, packing=None, rope=None) -> torch.Tensor:
        block = self.vit.blocks[index]
        attention = self._attentions[index]
        if self._post_norm[index]:
            # timm's ResPostBlock / EvaBlockPostNorm: the norms act on the branch outputs.
            x = x + _drop_path(
                block.drop_path1, block.norm1(attention.attend(x, key_mask, packing, rope)), packing
            )
            return x + _drop_path(block.drop_path2, block.norm2(block.mlp(x)), packing)
        y = _layer_scale(block, 1, attention.attend(block.norm1(x), key_mask, packing, rope))
        x = x + _drop_path(block.drop_path1, y, packing)
        return x + _drop_path(block.drop_path2, _layer_scale(block, 2, block.mlp(block.norm2(x))), packing)

    def _block_first(self, index: int, x: torch.Tensor, key_mask, packing=None, rope=None, first=None):
        """:meth:`_block`'s output at the first (class) token of each sequence only, (rows, D).

        For a last block whose patch tokens nothing reads: keys and values are still every token's, but
        the query, the projection, the MLP and the residuals act on the class token alone.
        """
        block = self.vit.blocks[index]
        attention = self._attentions[index]
        cls = x[:, 0] if packing is None else x.index_select(0, first)
        # Drop path on (rows, D): timm's DropPath draws one value per row, as on the full sequences.
        if self._post_norm[index]:
            y = attention.attend_first(x, key_mask, packing, rope, first)
            cls = cls + block.drop_path1(block.norm1(y))
            return cls + block.drop_path2(block.norm2(block.mlp(cls)))
        y = attention.attend_first(block.norm1(x), key_mask, packing, rope, first)
        cls = cls + block.drop_path1(_layer_scale(block, 1, y))
        return cls + block.drop_path2(_layer_scale(block, 2, block.mlp(block.norm2(cls))))

    def _block_rope(self, rope: torch.Tensor | None, index: int) -> torch.Tensor | None:
        """The rotary embedding block ``index`` uses (mixed rope has one per block)."""
        if rope is None or not getattr(self.vit, "rope_mixed", False):
            return rope
        return rope[index]

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)

    def _forward_full(self, patches, prefix, grid, rope) -> ViTTokens:
        x = self._start(torch.cat([prefix.expand(patches.shape[0], -1, -1), patches], dim=1))
        aux = None
        for index in range(self.depth):
            x = self._block(index, x, None, rope=self._block_rope(rope, index))
            if index == self.aux_index:
                aux = self._to_map(x, grid)
        x = self.vit.norm(x)
        return ViTTokens(x[:, 0], self._to_map(x, grid), aux, grid)

    def _forward_masked(self, patches, prefix, views, rope) -> torch.Tensor:
        """Plain path: each view's whole sequence, dropped keys masked in every block."""
        batch, num_views, _ = views.shape
        rows = batch * num_views
        x = torch.cat([prefix.expand(batch, -1, -1), patches], dim=1)
        x = self._start(x.repeat_interleave(num_views, dim=0))
        keep_prefix = views.new_zeros(rows, self.num_prefix_tokens)
        key_mask = torch.cat([keep_prefix, views.reshape(rows, -1)], dim=1)
        for index in range(self.depth):
            x = self._block(index, x, key_mask, rope=self._block_rope(rope, index))
        return self.vit.norm(x[:, 0]).reshape(batch, num_views, -1)

    def _forward_dropped(self, patches, prefix, views, rope) -> torch.Tensor:
        """Token-dropping path: only prefix + kept tokens of each view enter the blocks."""
        batch, num_views, num_patches = views.shape
        rows = batch * num_views
        n_prefix = self.num_prefix_tokens
        flat = views.reshape(rows, num_patches)
        kept = num_patches - flat.sum(dim=1)  # (rows,)
        # The one host sync of this path: the padded length and the number of packed tokens (on the CPU,
        # where nothing waits for it, every view's count, for the attention core view by view).
        row_sizes = None
        if _attention_by_rows(flat.device):
            kept_list = kept.tolist()
            longest, packed = max(kept_list), sum(kept_list)
            row_sizes = tuple(n_prefix + k for k in kept_list)
        else:
            longest, packed = (int(v) for v in torch.stack([kept.max(), kept.sum()]).tolist())
        length = n_prefix + longest
        packed += rows * n_prefix
        # Kept patch indices first, in their original order (a stable sort puts False before True).
        order = torch.sort(flat.to(torch.uint8), dim=1, stable=True).indices[:, :longest]
        column = torch.arange(length, device=flat.device)
        padding = column[None, :] >= (n_prefix + kept)[:, None]  # (rows, length), True = padding slot
        # Source of every slot in a table [prefix tokens; all patch tokens of all images].
        image = torch.arange(rows, device=flat.device) // num_views
        source = torch.cat(
            [column[:n_prefix].expand(rows, -1), n_prefix + image[:, None] * num_patches + order], dim=1
        )
        # Flat slot of each packed token: row r holds n_prefix + kept[r] tokens from slot r * length on.
        sizes = n_prefix + kept
        starts = torch.cumsum(sizes, dim=0) - sizes  # first packed token of each row
        row = torch.repeat_interleave(torch.arange(rows, device=flat.device), sizes, output_size=packed)
        index = row * length + torch.arange(packed, device=flat.device) - starts[row]
        table = torch.cat([prefix[0], patches.reshape(batch * num_patches, -1)], dim=0)
        x = self._start(table.index_select(0, source.flatten().index_select(0, index)))
        packing = (index, rows, length) if row_sizes is None else (index, rows, length, row_sizes)
        last = self.depth - 1
        for block_index in range(last):
            block_rope = _gather_rope(self._block_rope(rope, block_index), order)
            x = self._block(block_index, x, padding, packing, block_rope)
        # Only the class tokens leave this path: the last block computes them alone (each view's class
        # token is its first packed token).
        block_rope = _gather_rope(self._block_rope(rope, last), order)
        cls = self._block_first(last, x, padding, packing, block_rope, starts)
        return self.vit.norm(cls).reshape(batch, num_views, -1)


def _attention_by_rows(device: torch.device) -> bool:
    """Whether the token-dropping path runs the attention core view by view (CPU: one kernel per view
    costs nothing, padding to the longest view would) or on the padded layout (accelerators: one kernel)."""
    return device.type == "cpu"


def _gather_rope(rope: torch.Tensor | None, order: torch.Tensor) -> torch.Tensor | None:
    """Rotary embeddings of each view's kept patches in the padded layout.

    Args:
        rope: (P, R) shared by all heads, or (heads, P, R) per head; None = no rope.
        order: (rows, longest) patch index of every slot after the prefix (padding slots hold any index).

    Returns:
        (rows, 1, longest, R) or (rows, heads, longest, R), which broadcasts over (rows, heads, longest, R).
    """
    if rope is None:
        return None
    if rope.dim() == 2:
        return rope[order].unsqueeze(1)
    return rope[:, order].transpose(0, 1)


def _layer_scale(block: nn.Module, which: int, x: torch.Tensor) -> torch.Tensor:
    """timm's layer scale of branch ``which``: ``ls1``/``ls2`` (Block) or ``gamma_1``/``gamma_2`` (Eva)."""
    scale = getattr(block, f"ls{which}", None)
    if scale is not None:
        return scale(x)
    gamma = getattr(block, f"gamma_{which}", None)
    return x if gamma is None else gamma * x


def _is_post_norm(block: nn.Module) -> bool:
    from timm.models.eva import EvaBlockPostNorm
    from timm.models.vision_transformer import ResPostBlock

    return isinstance(block, (ResPostBlock, EvaBlockPostNorm))


def _drop_path(module: nn.Module, x: torch.Tensor, packing) -> torch.Tensor:
    """Stochastic depth per view also on packed tokens, where timm's ``DropPath`` would draw per token."""
    drop_prob = getattr(module, "drop_prob", 0.0)
    if packing is None or not module.training or not drop_prob:
        return module(x)
    index, rows, length = packing[:3]
    keep_prob = 1.0 - drop_prob
    # One draw per view, in the order and number timm's DropPath draws them on the plain path.
    keep = x.new_empty(rows).bernoulli_(keep_prob)
    if keep_prob > 0.0 and getattr(module, "scale_by_keep", True):
        keep.div_(keep_prob)
    return x * keep[index // length, None]


def _check_timm_vit(model: nn.Module) -> None:
    from timm.layers import GluMlp, Mlp, SwiGLU
    from timm.models.eva import EvaBlock, EvaBlockPostNorm
    from timm.models.vision_transformer import Block, ResPostBlock

    needed = ("patch_embed", "blocks", "norm", "cls_token", "num_prefix_tokens", "norm_pre")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"model ({type(model).__name__}) is not a timm VisionTransformer or Eva: no {missing}"
        )
    if model.cls_token is None:
        raise ValueError("model has no class token (class_token=False): MCC contrasts class tokens")
    if not hasattr(model.patch_embed, "proj") or not hasattr(model.patch_embed, "grid_size"):
        raise TypeError("model.patch_embed is not a timm PatchEmbed (no proj / grid_size)")
    # VisionTransformer keeps an Identity, Eva None, when patch dropout is off.
    patch_drop = getattr(model, "patch_drop", None)
    if patch_drop is not None and not isinstance(patch_drop, nn.Identity):
        raise ValueError("model uses patch dropout (patch_drop_rate > 0), which would fight the key masks")
    if getattr(model, "rope", None) is not None and not hasattr(model.rope, "get_embed"):
        raise TypeError(f"model.rope ({type(model.rope).__name__}) is not a timm rotary embedding")
    blocks = (Block, ResPostBlock, EvaBlock, EvaBlockPostNorm)
    for index, block in enumerate(model.blocks):
        kind = type(block).__name__
        if not isinstance(block, blocks):
            raise TypeError(
                f"model.blocks[{index}] ({kind}) is not a timm Block, ResPostBlock, EvaBlock or "
                "EvaBlockPostNorm: its computation (e.g. parallel branches) is not reproduced here"
            )
        # The token-dropping path runs the MLP on packed tokens: it must act on each token alone.
        if not isinstance(block.mlp, (Mlp, GluMlp, SwiGLU)):
            raise TypeError(
                f"model.blocks[{index}].mlp ({type(block.mlp).__name__}) is not a per-token timm MLP "
                "(Mlp, GluMlp, SwiGLU)"
            )
        attn_prefix = getattr(block.attn, "num_prefix_tokens", model.num_prefix_tokens)
        if attn_prefix != model.num_prefix_tokens:
            raise ValueError(
                f"model.blocks[{index}].attn.num_prefix_tokens ({attn_prefix}) differs from the model's "
                f"{model.num_prefix_tokens} prefix tokens: rotary embeddings would rotate the wrong tokens"
            )


def patch_vit(model: nn.Module, aux_layer: int = -3, antialias_pos_embed: bool = False) -> KeyMaskedViT:
    """Wraps a timm ``VisionTransformer`` or ``Eva`` so that it accepts per-view key masks.

    Args:
        model: a timm ``VisionTransformer`` (any size; class token required; register and distillation
            tokens supported; fixed-size or ``dynamic_img_size`` models; ``no_embed_class`` models; CLIP's
            ``norm_pre``) or ``Eva`` (EVA-02, DINOv3, RoPE ViTs: rotary embeddings, SwiGLU, registers,
            layer scale). Refused, with the reason: no class token, patch dropout, parallel blocks.
        aux_layer: block whose output is returned as ``aux`` (Python list index; -3 = 10th of 12).
        antialias_pos_embed: antialias the bicubic position-embedding resampling of a fixed-size model
            (False = published MCC). A ``dynamic_img_size`` model is resampled the way timm's own
            ``forward_features`` does it (bicubic with antialias), so the unmasked output equals timm's.

    Returns:
        a :class:`KeyMaskedViT` sharing ``model``'s parameters (state-dict keys: timm's under ``vit.``).

    Example:
        >>> import timm
        >>> vit = patch_vit(timm.create_model("test_vit", pretrained=False))
        >>> tokens = vit(torch.randn(1, 3, 160, 160), key_mask=torch.rand(1, 8, 100) < 0.75)
        >>> tokens.cls.shape
        torch.Size([1, 8, 64])
    """
    return KeyMaskedViT(model, aux_layer=aux_layer, antialias_pos_embed=antialias_pos_embed)
