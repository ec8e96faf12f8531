"""Pictures of CAMs and label maps: the VOC colour map, overlays, and image | CAM | ... | label strips.

Everything returns ``uint8`` NumPy arrays of shape (H, W, 3) (RGB), so the result can be written with
Pillow (:func:`to_pil`), shown with any plotting library, or stacked further; no plotting library is
needed. Inputs may be NumPy arrays or torch tensors (on any device):

* images: (H, W, 3) ``uint8`` RGB, or (3, H, W) float RGB in [0, 1] (e.g. :meth:`~mcc.MCCNet.denormalize`
  of a network input, one image of the batch);
* CAMs: (H, W) or (C, H, W) float in [0, 1] (a (C, H, W) stack is shown as its maximum over classes);
* label maps: (H, W) integer class indices, background 0, ``ignore_index`` (255) shown in the usual VOC
  light colour (224, 224, 192).

Example:
    >>> import torch
    >>> image = torch.rand(3, 32, 48)
    >>> cam = torch.rand(2, 32, 48)
    >>> label = torch.randint(0, 3, (32, 48))
    >>> strip = pipeline_strip(image, cam=cam, prediction=label, ground_truth=label)
    >>> strip.shape, strip.dtype
    ((32, 198, 3), dtype('uint8'))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "cam_colormap",
    "colorize_label",
    "make_grid",
    "overlay_cam",
    "overlay_label",
    "pipeline_strip",
    "to_pil",
    "to_rgb_image",
    "voc_palette",
]


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: colour ``i`` spreads the bits of ``i`` over R, G and B.

    Class 0 (background) is black, 1 (aeroplane) (128, 0, 0), ... and 255 (ignore) (224, 224, 192), as in
    the VOC development kit, so palette PNGs written with it look like the official ground truth.

    Args:
        num_colors: number of entries (at most 256).

    Returns:
        (num_colors, 3) ``uint8`` array.

    Example:
        >>> voc_palette()[[0, 1, 15, 255]].tolist()
        [[0, 0, 0], [128, 0, 0], [192, 128, 128], [224, 224, 192]]
    """
    if not 1 <= num_colors <= 256:
        raise ValueError(f"num_colors must be in [1, 256], got {num_colors}")
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):  # bit j of the index goes to bit 7 - j/3 of one channel
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def _numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)  # e.g. a PIL image
    except Exception as error:  # pragma: no cover - exotic inputs
        raise ValueError(
            f"{name} must be a NumPy array or torch tensor, got {type(value).__name__}"
        ) from error


def to_rgb_image(image: Any) -> np.ndarray:
    """An image as (H, W, 3) ``uint8`` RGB.

    Args:
        image: (H, W, 3) ``uint8`` (returned as is), (H, W, 3) or (3, H, W) float RGB in [0, 1] (clipped),
            as a NumPy array, torch tensor or PIL image.

    Returns:
        (H, W, 3) ``uint8`` array.
    """
    array = _numpy(image, "image")
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise ValueError(f"image must have shape (H, W, 3) or (3, H, W), got {array.shape}")
    if array.shape[-1] != 3:  # channels first
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float RGB in [0, 1], got {array.dtype}")
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _heat(cam: Any) -> np.ndarray:
    array = _numpy(cam, "cam")
    if array.ndim == 3:
        array = array.max(axis=0) if array.shape[0] else np.zeros(array.shape[1:], np.float32)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"cam must be a float map of shape (H, W) or (C, H, W), got {array.dtype} {array.shape}"
        )
    return np.nan_to_num(array.astype(np.float32), nan=0.0)


def cam_colormap(cam: Any) -> np.ndarray:
    """A jet-like colour map of a CAM: 0 dark blue, 0.5 green-yellow, 1 dark red.

    Args:
        cam: (H, W) float map, or (C, H, W) shown as its maximum over C; values outside [0, 1] are clipped.

    Returns:
        (H, W, 3) ``uint8`` RGB.

    Example:
        >>> cam_colormap(np.array([[0.0, 1.0]], dtype=np.float32)).tolist()
        [[[0, 0, 128], [128, 0, 0]]]
    """
    x = np.clip(_heat(cam), 0.0, 1.0)
    # MATLAB's jet: each channel a clipped triangle, peaks at 3/4 (red), 1/2 (green), 1/4 (blue).
    rgb = np.stack([1.5 - np.abs(4.0 * x - c) for c in (3.0, 2.0, 1.0)], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_label(label: Any, palette: np.ndarray | None = None) -> np.ndarray:
    """Colours of a label map (class indices) through a palette (default :func:`voc_palette`).

    Args:
        label: (H, W) integer class indices in [0, 255] (255 = ignore, drawn (224, 224, 192) with the VOC
            palette).
        palette: (N, 3) ``uint8`` colours, index = class; default the 256 VOC colours.

    Returns:
        (H, W, 3) ``uint8`` RGB.
    """
    array = _numpy(label, "label")
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"label must be an integer map of shape (H, W), got {array.dtype} {array.shape}")
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must have shape (N, 3), got {palette.shape}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= len(palette)):
        raise ValueError(f"label has values outside [0, {len(palette)}) (the palette's size)")
    return palette[array]


def _blend(image: np.ndarray, color: np.ndarray, alpha: float, name: str) -> np.ndarray:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if image.shape[:2] != color.shape[:2]:
        raise ValueError(f"{name} has size {color.shape[:2]} but image {image.shape[:2]}")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return (mixed + 0.5).astype(np.uint8)


def overlay_cam(image: Any, cam: Any, alpha: float = 0.5) -> np.ndarray:
    """A CAM in :func:`cam_colormap` colours blended over an image: ``(1 - alpha) image + alpha colours``.

    Args:
        image: (H, W, 3) ``uint8`` or (3, H, W) float RGB in [0, 1] (see :func:`to_rgb_image`).
        cam: (H, W) or (C, H, W) float in [0, 1] at the image size (a stack is shown as its maximum; to
            see only the present classes, pass ``cam * cls_label[:, None, None]``).
        alpha: weight of the colours.

    Returns:
        (H, W, 3) ``uint8`` RGB.
    """
    image = to_rgb_image(image)
    return _blend(image, cam_colormap(cam), alpha, "cam")


def overlay_label(
    image: Any, label: Any, alpha: float = 0.5, palette: np.ndarray | None = None
) -> np.ndarray:
    """A label map in palette colours (:func:`colorize_label`) blended over an image.

    Args:
        image: (H, W, 3) ``uint8`` or (3, H, W) float RGB in [0, 1].
        label: (H, W) integer class indices (255 = ignore).
        alpha: weight of the colours.
        palette: (N, 3) ``uint8`` colours; default the VOC colour map.

    Returns:
        (H, W, 3) ``uint8`` RGB.
    """
    image = to_rgb_image(image)
    return _blend(image, colorize_label(label, palette), alpha, "label")


def make_grid(
    rows: Sequence[Sequence[Any]],
    padding: int = 2,
    pad_value: int = 255,
    titles: Sequence[str] | None = None,
    title_size: int = 11,
) -> np.ndarray:
    """Panels laid out in rows and columns, each cell as large as the largest panel, panels centred.

    Args:
        rows: a list of rows, each a list of (H, W, 3) ``uint8`` panels (rows may differ in length).
        padding: pixels between cells and around the grid.
        pad_value: grey level of the padding (255 white).
        titles: column titles, drawn above the grid with Pillow's default font (at most one per column).
        title_size: font size of the titles, pixels.

    Returns:
        (H_grid, W_grid, 3) ``uint8`` RGB.

    Example:
        >>> panel = np.zeros((4, 6, 3), np.uint8)
        >>> make_grid([[panel, panel], [panel]], padding=1).shape
        (11, 15, 3)
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be in [0, 255], got {pad_value}")
    if title_size < 1:
        raise ValueError(f"title_size must be >= 1, got {title_size}")
    panels = [[np.asarray(p) for p in row] for row in rows]
    if not panels or not any(panels):
        raise ValueError("rows must hold at least one panel")
    for row in panels:
        for panel in row:
            if panel.ndim != 3 or panel.shape[-1] != 3 or panel.dtype != np.uint8:
                raise ValueError(
                    f"rows: every panel must be (H, W, 3) uint8, got {panel.dtype} {panel.shape}"
                )
    cell_h = max(p.shape[0] for row in panels for p in row)
    cell_w = max(p.shape[1] for row in panels for p in row)
    columns = max(len(row) for row in panels)
    height = len(panels) * (cell_h + padding) + padding
    width = columns * (cell_w + padding) + padding
    grid = np.full((height, width, 3), pad_value, dtype=np.uint8)
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            top = padding + r * (cell_h + padding) + (cell_h - panel.shape[0]) // 2
            left = padding + c * (cell_w + padding) + (cell_w - panel.shape[1]) // 2
            grid[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
    if titles is not None:
        if len(titles) > columns:
            raise ValueError(f"titles: {len(titles)} titles for {columns} columns")
        header = _title_row(titles, width, (cell_w, padding), pad_value, title_size)
        grid = np.concatenate([header, grid], axis=0)
    return grid


def _legend_row(
    entries: Sequence[tuple[str, tuple[int, int, int]]], width: int, padding: int, size: int
) -> np.ndarray:
    """Colour swatches with their names, left to right, wrapped to ``width`` (white background)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = size + 2 * max(2, size // 3)
    placed, x, y = [], padding, 0
    for name, colour in entries:
        left, _, right, _ = measure.textbbox((0, 0), name, font=font)
        item_w = size + 4 + (right - left) + 2 * size
        if x + item_w > width - padding and x > padding:
            x, y = padding, y + line_h
        placed.append((x, y, name, colour))
        x += item_w
    row = Image.new("RGB", (width, y + line_h), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    for x, y, name, colour in placed:
        top = y + (line_h - size) // 2
        draw.rectangle(
            [x, top, x + size - 1, top + size - 1], fill=tuple(int(c) for c in colour), outline=(0, 0, 0)
        )
        _, text_top, _, text_bottom = draw.textbbox((0, 0), name, font=font)
        draw.text(
            (x + size + 4, y + (line_h - (text_bottom - text_top)) // 2 - text_top),
            name,
            fill=(0, 0, 0),
            font=font,
        )
    return np.asarray(row, dtype=np.uint8)


def _title_row(
    titles: Sequence[str], width: int, cell: tuple[int, int], pad_value: int, size: int
) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        font = ImageFont.load_default()
    cell_w, padding = cell
    height = size + 2 * max(2, size // 3)
    row = Image.new("RGB", (width, height), (pad_value,) * 3)
    draw = ImageDraw.Draw(row)
    ink = (0, 0, 0) if pad_value > 127 else (255, 255, 255)
    for column, title in enumerate(titles):
        left, top, right, bottom = draw.textbbox((0, 0), str(title), font=font)
        x = padding + column * (cell_w + padding) + (cell_w - (right - left)) // 2 - left
        y = (height - (bottom - top)) // 2 - top
        draw.text((x, y), str(title), fill=ink, font=font)
    return np.asarray(row, dtype=np.uint8)


def pipeline_strip(
    image: Any,
    *,
    cam: Any = None,
    cam_par: Any = None,
    prediction: Any = None,
    ground_truth: Any = None,
    alpha: float = 0.5,
    padding: int = 2,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """One image through the pipeline, left to right: image | CAM | CAM+PAR | prediction | ground truth.

    Panels that are ``None`` are left out. A float panel (``(H, W)`` or ``(C, H, W)`` in [0, 1]) is drawn
    as a CAM overlay (:func:`overlay_cam`), an integer panel (``(H, W)``) as a label map in palette
    colours (:func:`colorize_label`, 255 in the light ignore colour), so ``cam_par`` may be either a
    refined CAM or the refined label of :func:`~mcc.refine_cams_with_background`.

    Args:
        image: (H, W, 3) ``uint8`` or (3, H, W) float RGB in [0, 1].
        cam, cam_par, prediction, ground_truth: the panels, each at the image size.
        alpha: weight of the CAM colours in the overlays.
        padding: white pixels between the panels (none around the strip).
        palette: label colours; default the VOC colour map.

    Returns:
        (H, W_strip, 3) ``uint8`` RGB.
    """
    rgb = to_rgb_image(image)
    panels = [rgb]
    for name, value in (
        ("cam", cam),
        ("cam_par", cam_par),
        ("prediction", prediction),
        ("ground_truth", ground_truth),
    ):
        if value is None:
            continue
        array = _numpy(value, name)
        if np.issubdtype(array.dtype, np.floating):
            panels.append(_blend(rgb, cam_colormap(array), alpha, name))
        else:
            if array.shape != rgb.shape[:2]:
                raise ValueError(f"{name} has shape {array.shape} but image {rgb.shape[:2]}")
            panels.append(colorize_label(array, palette))
    grid = make_grid([panels], padding=padding)
    return grid[padding : grid.shape[0] - padding, padding : grid.shape[1] - padding]


def to_pil(array: Any):
    """A (H, W, 3) ``uint8`` array (or anything :func:`to_rgb_image` takes) as a ``PIL.Image.Image``."""
    from PIL import Image

    return Image.fromarray(to_rgb_image(array))
