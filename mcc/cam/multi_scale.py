"""Multi-scale, flip-augmented class activation maps (docs/method.md section 2, step 2; ToCo/AFA)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["multi_scale_cam", "multi_scale_cam_seg"]

CamFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor]


def _split_maps(returned) -> tuple[torch.Tensor, torch.Tensor | None]:
    # A single tensor is the CAM without auxiliary maps; anything but a tensor or a pair is refused here,
    # by name, rather than failing to unpack.
    if isinstance(returned, torch.Tensor):
        return returned, None
    if isinstance(returned, tuple) and len(returned) == 2:
        return returned
    kind = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
    raise ValueError(f"cam_fn must return a tensor cam or a tuple (cam, cam_aux or None), got {kind}")


def _check_maps(name: str, maps: torch.Tensor, batch: int) -> None:
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4 or maps.shape[0] != batch:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"cam_fn must return {name} of shape ({batch}, C, h, w), got {shape}")


def _min_max(cam: torch.Tensor) -> torch.Tensor:
    # Per image and class; the 1e-5 keeps an all-zero map at zero instead of NaN. A new tensor (``cam``
    # may be a caller's), then in place.
    cam = cam - cam.amin(dim=(-2, -1), keepdim=True)
    return cam.div_(cam.amax(dim=(-2, -1), keepdim=True) + 1e-5)


@torch.no_grad()
def multi_scale_cam(
    cam_fn: CamFn,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5),
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class activation maps averaged over scales and a horizontal flip, min-max normalised.

    For every scale ``s`` the images are resized (bilinear, ``align_corners=False``) to
    ``int(s*H) x int(s*W)`` and, with ``flip``, concatenated with their horizontal mirror, so ``cam_fn``
    runs once per scale on a batch of ``2B``. Its maps are resized back to ``H x W`` (bilinear,
    ``align_corners=False``), the mirrored half is flipped back and merged with the direct half by
    element-wise max, then ReLU. The per-scale maps are summed and normalised per image and class:
    ``cam = cam - min(cam); cam = cam / (max(cam) + 1e-5)``. The same is done to the auxiliary maps.

    Args:
        cam_fn: ``cam_fn(images) -> (cam, cam_aux)`` with raw class maps at any resolution (e.g. token
            resolution), shapes ``(N, C, h, w)`` and ``(N, C_aux, h', w')`` for an input of ``N`` images;
            ``cam_aux`` may be ``None``, and a ``cam_fn`` that returns one tensor is taken as returning
            ``(cam, None)``.
        images: input batch, shape (B, 3, H, W) (normalised as ``cam_fn`` expects).
        scales: resize factors, each > 0 (published: 1.0, 0.5, 1.5).
        flip: also run the horizontally flipped images.

    Returns:
        ``(cam, cam_aux)``: shapes (B, C, H, W) and (B, C_aux, H, W), float32, values in [0, 1), on
        ``images.device``, without gradient; ``cam_aux`` is ``None`` when ``cam_fn`` returns ``None``.

    Raises:
        ValueError: ``images`` is not 4-D, ``scales`` is empty or has a factor that gives an empty image,
            or ``cam_fn`` returns something other than a tensor or a pair, or maps of the wrong shape.

    Example:
        >>> weight = torch.randn(20, 3)
        >>> def cam_fn(x):
        ...     maps = torch.einsum("kc,bchw->bkhw", weight, F.avg_pool2d(x, 16))
        ...     return maps, maps
        >>> cam, cam_aux = multi_scale_cam(cam_fn, torch.rand(2, 3, 64, 48))
        >>> cam.shape
        torch.Size([2, 20, 64, 48])
    """
    return _deferred_multi_scale_cam(cam_fn, images, scales, flip, defer_direct=False)(None)


def _deferred_multi_scale_cam(
    cam_fn: CamFn,
    images: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
    *,
    defer_direct: bool,
    classes: torch.Tensor | None = None,
) -> Callable[[tuple[torch.Tensor, torch.Tensor | None] | None], tuple[torch.Tensor, torch.Tensor | None]]:
    """:func:`multi_scale_cam` in two parts, for a caller that computes ``cam_fn(images)`` itself.

    With ``defer_direct``, ``cam_fn`` does not run on the unflipped images at full size (every scale whose
    size is ``H x W``); the returned ``finish(direct)`` takes those maps, ``direct = cam_fn(images)``, and
    returns what :func:`multi_scale_cam` returns. The training step gets them from its gradient pass (the
    same weights on the same input). The flipped half of such a scale runs alone (batch B, not 2B), and
    both halves are resized separately; every operation is per image and channel, so the result is the
    same. Without ``defer_direct`` everything runs now and ``finish`` takes None. No gradient.

    ``classes`` (indices on the maps' device): only these channels are resized, merged and normalised,
    the others are returned as zeros (for callers whose labels read only the classes present). Every
    channel is computed on its own, so the given ones equal :func:`multi_scale_cam`'s.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if len(scales) == 0:
        raise ValueError("scales must not be empty")
    batch, _, height, width = images.shape
    size_hw = (height, width)
    sizes = [(int(s * height), int(s * width)) for s in scales]
    for s, (h, w) in zip(scales, sizes, strict=True):
        if s <= 0 or h < 1 or w < 1:
            raise ValueError(f"scales: factor {s} gives an empty {h}x{w} image from {height}x{width}")
    defer_direct = defer_direct and size_hw in sizes  # nothing to defer without a full-size scale
    channels: list[int | None] = [None, None]  # of cam and cam_aux, as cam_fn returns them

    def maps_of(x: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        cam, cam_aux = _split_maps(cam_fn(x))
        _check_maps("cam", cam, rows)
        if cam_aux is not None:
            _check_maps("cam_aux", cam_aux, rows)
        channels[:] = cam.shape[1], None if cam_aux is None else cam_aux.shape[1]
        cam_aux = None if cam_aux is None else _resize(cam_aux, size_hw, images.device, classes)
        return _resize(cam, size_hw, images.device, classes), cam_aux

    # Per scale: the merged (cam, cam_aux); None for a deferred scale (then `flipped`: its flipped half).
    parts: list[tuple[torch.Tensor, torch.Tensor | None] | None] = []
    flipped: tuple[torch.Tensor, torch.Tensor | None] | None = None
    with torch.no_grad():
        for size in sizes:
            if defer_direct and size == size_hw:
                if flip and flipped is None:
                    flipped = maps_of(images.flip(-1), batch)
                parts.append(None)
                continue
            x = images
            if size != size_hw:
                x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            if flip:
                x = torch.cat([x, x.flip(-1)], dim=0)
            cam, cam_aux = maps_of(x, x.shape[0])
            parts.append(
                (
                    _merge_resized(cam, batch, flip),
                    None if cam_aux is None else _merge_resized(cam_aux, batch, flip),
                )
            )

    def finish(direct):
        if defer_direct == (direct is None):
            raise ValueError(
                "finish takes cam_fn(images) exactly when the direct pass was deferred (a scale keeps H x W)"
            )
        with torch.no_grad():
            if direct is not None:
                cam, cam_aux = _split_maps(direct)
                _check_maps("cam", cam, batch)
                channels[0] = cam.shape[1]
                cam = _resize(cam, size_hw, images.device, classes)
                if cam_aux is not None:
                    _check_maps("cam_aux", cam_aux, batch)
                    channels[1] = cam_aux.shape[1]
                    cam_aux = _resize(cam_aux, size_hw, images.device, classes)
                if flip:  # the flipped half merged by max, as _merge does with both halves in one batch
                    assert flipped is not None
                    cam = torch.maximum(cam, flipped[0].flip(-1), out=cam)
                    if cam_aux is not None and flipped[1] is not None:
                        cam_aux = torch.maximum(cam_aux, flipped[1].flip(-1), out=cam_aux)
                    elif cam_aux is not None:
                        cam_aux = None
                direct_parts = (cam.relu_(), None if cam_aux is None else cam_aux.relu_())
            merged = [direct_parts if part is None else part for part in parts]
            cam = _min_max(_sum([part[0] for part in merged]))
            aux = [part[1] for part in merged if part[1] is not None]
            cam_aux = _min_max(_sum(aux)) if aux else None
            if classes is not None:
                cam = _scatter(cam, channels[0], classes)
                cam_aux = None if cam_aux is None else _scatter(cam_aux, channels[1], classes)
            return cam, cam_aux

    return finish


def _sum(maps: list[torch.Tensor]) -> torch.Tensor:
    """``((m0 + m1) + m2) + ...`` in this order; in place after the first sum, which makes a new tensor (a
    list may hold one tensor twice)."""
    total = maps[0]
    for index, other in enumerate(maps[1:]):
        total = total + other if index == 0 else total.add_(other)
    return total


def _scatter(maps: torch.Tensor, channels: int, classes: torch.Tensor) -> torch.Tensor:
    """Maps of the ``classes`` channels -> all ``channels``, zeros elsewhere."""
    out = maps.new_zeros(maps.shape[0], channels, *maps.shape[2:])
    return out.index_copy_(1, classes, maps)


def _resize(
    maps: torch.Tensor, size: tuple[int, int], device: torch.device, classes: torch.Tensor | None = None
) -> torch.Tensor:
    # NCHW-contiguous (a CAM made by a 1x1 convolution of transposed tokens comes channels-last), so that
    # every channel is resized on its own by the same kernel whatever the channel count
    maps = maps.to(device=device, dtype=torch.promote_types(maps.dtype, torch.float32))
    maps = maps.contiguous()
    if classes is not None:
        maps = maps.index_select(1, classes)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def _merge(
    maps: torch.Tensor, batch: int, size: tuple[int, int], flip: bool, device: torch.device
) -> torch.Tensor:
    """One scale's maps (N, C, h, w) -> (B, C, H, W): resize, merge the flipped half by max, ReLU."""
    return _merge_resized(_resize(maps, size, device), batch, flip)


def _merge_resized(maps: torch.Tensor, batch: int, flip: bool) -> torch.Tensor:
    """One scale's resized maps (N, C, H, W) -> (B, C, H, W): merge the flipped half by max, ReLU.

    In place on ``maps`` (a fresh tensor of the caller's)."""
    if flip:
        direct = maps[:batch]
        maps = torch.maximum(direct, maps[batch:].flip(-1), out=direct)
    return maps.relu_()


def resize_to_patch_multiple(images: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Images (B, 3, H, W) resized bilinearly to the nearest sides that are multiples of ``patch``.

    A ViT needs whole patches; :func:`multi_scale_cam` resizes the maps back to (H, W). Returns the
    input itself when its sides already are multiples.
    """
    height, width = images.shape[-2:]
    size = (
        max(patch[0], round(height / patch[0]) * patch[0]),
        max(patch[1], round(width / patch[1]) * patch[1]),
    )
    if size == (height, width):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


SegCamFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@torch.no_grad()
def multi_scale_cam_seg(
    fn: SegCamFn,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5),
    flip: bool = True,
    *,
    aux_from_last_scale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CAMs and summed segmentation logits in one multi-scale + flip pass (CoSA's teacher pass).

    CoSA (Yang et al., ECCV 2024; github.com/youshyee/CoSA) makes its pseudo labels from one pass of its
    EMA teacher that returns CAMs and segmentation logits at once. ``cam`` and ``cam_aux`` are computed
    exactly as :func:`multi_scale_cam` computes them. The segmentation logits of every scale are resized
    bilinearly (``align_corners=False``) to ``H x W``, the mirrored half is flipped back and **added**,
    and the results are **summed** over scales (CoSA: 6 maps); no ReLU, no normalisation.

    Args:
        fn: ``fn(images) -> (cam, cam_aux, seg_logits)``, shapes ``(N, C, h, w)``, ``(N, C, h', w')``
            and ``(N, K, h'', w'')`` for ``N`` images (e.g. token resolution).
        images: input batch, shape (B, 3, H, W).
        scales: resize factors, each > 0 (CoSA: 1.0, 0.5, 1.5).
        flip: also run the horizontally flipped images.
        aux_from_last_scale: reproduce the published CoSA code, whose overwritten list makes ``cam_aux``
            the last scale's map only (still min-max normalised). Default False: summed over the scales.

    Returns:
        ``(cam, cam_aux, seg_logits)``: (B, C, H, W) and (B, C, H, W) in [0, 1), (B, K, H, W) float32;
        no gradient.

    Raises:
        ValueError: as :func:`multi_scale_cam`, or an ``fn`` that does not return three maps of batch N.

    Example:
        >>> weight = torch.randn(21, 3)
        >>> def fn(x):
        ...     maps = torch.einsum("kc,bchw->bkhw", weight, F.avg_pool2d(x, 16))
        ...     return maps[:, 1:], maps[:, 1:], maps
        >>> cam, cam_aux, seg = multi_scale_cam_seg(fn, torch.rand(2, 3, 64, 48))
        >>> seg.shape
        torch.Size([2, 21, 64, 48])
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if len(scales) == 0:
        raise ValueError("scales must not be empty")
    batch, _, height, width = images.shape
    sizes = [(int(s * height), int(s * width)) for s in scales]
    for s, (h, w) in zip(scales, sizes, strict=True):
        if s <= 0 or h < 1 or w < 1:
            raise ValueError(f"scales: factor {s} gives an empty {h}x{w} image from {height}x{width}")

    cam_sum = aux_sum = seg_sum = None
    for size in sizes:
        x = images
        if size != (height, width):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        returned = fn(x)
        if not isinstance(returned, tuple) or len(returned) != 3:
            kind = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
            raise ValueError(f"fn must return a tuple (cam, cam_aux, seg_logits), got {kind}")
        cam, cam_aux, seg = returned
        for name, maps in (("cam", cam), ("cam_aux", cam_aux), ("seg_logits", seg)):
            _check_maps(name, maps, x.shape[0])
        cam = _merge_resized(_resize(cam, (height, width), images.device), batch, flip)
        cam_aux = _merge_resized(_resize(cam_aux, (height, width), images.device), batch, flip)
        seg = _resize(seg, (height, width), images.device)
        if flip:
            seg = seg[:batch] + seg[batch:].flip(-1)
        cam_sum = cam if cam_sum is None else cam_sum + cam
        aux_sum = cam_aux if aux_sum is None or aux_from_last_scale else aux_sum + cam_aux
        seg_sum = seg if seg_sum is None else seg_sum + seg
    return _min_max(cam_sum), _min_max(aux_sum), seg_sum
