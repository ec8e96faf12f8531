"""Writes ``tests/refine/data/bilateral_reference.npz``: outputs of the rloss ``bilateralfilter`` extension.

The stored numbers let ``test_bilateral_reference.py`` check :func:`mcc.refine.bilateral_filter` against
the compiled C++ filter of the regularised loss (Tang et al. 2018, github.com/meng-tang/rloss,
``pytorch/wrapper/bilateralfilter``) without building it. Only its outputs are stored, not its code.

To regenerate, build the extension outside this repository (it needs ``swig`` and a C++ compiler)::

    git clone https://github.com/meng-tang/rloss /tmp/rloss
    cd /tmp/rloss/pytorch/wrapper/bilateralfilter
    pip install swig
    swig -python -c++ bilateralfilter.i
    g++ -shared -fPIC -O3 -fwrapv -fopenmp -DPyString_Check=PyUnicode_Check -DPyInt_Check=PyLong_Check \\
        -I"$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \\
        -I"$(python -c 'import numpy; print(numpy.get_include())')" \\
        bilateralfilter_wrap.cxx bilateralfilter.cpp permutohedral.cpp \\
        -o _bilateralfilter$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

then run ``python tests/refine/make_bilateral_reference.py /tmp/rloss/pytorch/wrapper/bilateralfilter``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).parent / "data" / "bilateral_reference.npz"

# (batch, channels, height, width, sigma_rgb, sigma_xy, image kind): odd sizes, H*W not a multiple of 4
# (the C++ SSE path's padding lanes), K = 1 and 3, the published rloss bandwidths (15, 100 * 0.5), the
# evaluation CRF's bilateral kernel (5, 121) and two narrow ones.
CASES = [
    (1, 1, 5, 7, 15.0, 50.0, "uint8"),
    (2, 3, 13, 11, 15.0, 50.0, "uint8"),
    (2, 3, 24, 31, 15.0, 50.0, "continuous"),
    (1, 1, 37, 29, 5.0, 121.0, "uint8"),
    (3, 3, 16, 16, 5.0, 121.0, "continuous"),
    (2, 3, 19, 23, 3.0, 3.0, "smooth"),
    (1, 3, 21, 18, 13.0, 80.0, "smooth"),
    (1, 2, 64, 80, 15.0, 50.0, "smooth"),
    (2, 4, 33, 35, 15.0, 50.0, "blocks"),
    # Degenerate shapes and extreme bandwidths: one pixel, one row, one column, sub-pixel sigma_xy.
    (1, 2, 1, 1, 15.0, 50.0, "uint8"),
    (2, 1, 1, 17, 0.7, 0.5, "continuous"),
    (1, 3, 23, 1, 1000.0, 10000.0, "uint8"),
]


def make_image(rng: np.random.Generator, batch: int, height: int, width: int, kind: str) -> np.ndarray:
    """RGB 0-255, (B, 3, H, W) float32: 8-bit values, continuous values, a smooth field or flat blocks."""
    if kind == "uint8":
        return rng.integers(0, 256, (batch, 3, height, width)).astype(np.float32)
    if kind == "continuous":
        return (rng.random((batch, 3, height, width)) * 255).astype(np.float32)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    if kind == "smooth":
        phase = rng.random((batch, 3, 1, 1)) * 6
        field = 127.5 + 100 * np.sin(3 * xx + 2 * yy + phase) * np.cos(2 * yy - xx + phase)
        return (field + rng.normal(0, 4, (batch, 3, height, width))).clip(0, 255).astype(np.float32)
    # Flat blocks with exact ties in colour (and black pixels, whose features equal the padding lanes').
    colours = rng.integers(0, 256, (batch, 3, 4)).astype(np.float32)
    colours[:, :, 0] = 0
    block = (yy > 0.5).astype(int) * 2 + (xx > 0.5).astype(int)
    return np.take_along_axis(
        colours, np.broadcast_to(block.reshape(1, 1, -1), (batch, 3, block.size)), 2
    ).reshape(batch, 3, height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extension_dir", help="folder holding the built bilateralfilter module")
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    sys.path.insert(0, args.extension_dir)
    extension = importlib.import_module("bilateralfilter")

    rng = np.random.default_rng(2018)
    arrays: dict[str, np.ndarray] = {}
    for index, (batch, channels, height, width, sigma_rgb, sigma_xy, kind) in enumerate(CASES):
        image = make_image(rng, batch, height, width, kind)
        values = rng.random((batch, channels, height, width)).astype(np.float32)
        if index % 2:
            values = np.exp(3 * values) / np.exp(3 * values).sum(1, keepdims=True)  # probability-like
            values = values.astype(np.float32)
        out = np.zeros(values.size, np.float32)
        extension.bilateralfilter_batch(
            np.ascontiguousarray(image).ravel(),
            np.ascontiguousarray(values).ravel(),
            out,
            batch,
            channels,
            height,
            width,
            sigma_rgb,
            sigma_xy,
        )
        arrays[f"image_{index}"] = image
        arrays[f"values_{index}"] = values
        arrays[f"output_{index}"] = out.reshape(values.shape)
        arrays[f"sigmas_{index}"] = np.array([sigma_rgb, sigma_xy], np.float64)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    print(f"wrote {len(CASES)} cases to {args.output} ({Path(args.output).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
