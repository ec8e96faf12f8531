"""bilateral_filter against stored outputs of the compiled rloss ``bilateralfilter`` extension.

``make_bilateral_reference.py`` (next to this file) built the extension and wrote the reference; the
cases cover odd sizes, H*W not a multiple of 4, K = 1, 2, 3, 4, one pixel, one row, one column, the
published rloss bandwidths, the evaluation CRF's bilateral kernel, sub-pixel and very large ones. The
contract is 1e-4 relative (max |diff| / max |ref|); on the CPU
in float32 the filter reproduces the C++ output bit for bit.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from mcc.refine import bilateral_filter

REFERENCE = np.load(Path(__file__).parent / "data" / "bilateral_reference.npz")
CASES = sorted(int(name.split("_")[1]) for name in REFERENCE.files if name.startswith("output_"))


def run_case(index, device="cpu"):
    image = torch.from_numpy(REFERENCE[f"image_{index}"]).to(device)
    values = torch.from_numpy(REFERENCE[f"values_{index}"]).to(device)
    sigma_rgb, sigma_xy = (float(s) for s in REFERENCE[f"sigmas_{index}"])
    return bilateral_filter(image, values, sigma_rgb, sigma_xy).cpu(), torch.from_numpy(
        REFERENCE[f"output_{index}"]
    )


def test_reference_covers_the_cases_that_matter():
    shapes = [REFERENCE[f"values_{i}"].shape for i in CASES]
    assert any((h * w) % 4 for _, _, h, w in shapes) and any((h * w) % 4 == 0 for _, _, h, w in shapes)
    assert {k for _, k, _, _ in shapes} >= {1, 3}
    sigmas = {tuple(REFERENCE[f"sigmas_{i}"]) for i in CASES}
    assert {(15.0, 50.0), (5.0, 121.0)} <= sigmas


@pytest.mark.parametrize("index", CASES)
def test_matches_the_rloss_extension(index):
    out, reference = run_case(index)
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert (out - reference).abs().max() / reference.abs().max() < 1e-4
    # The same operations in the same order: bit for bit on the CPU.
    assert torch.equal(out, reference)


@pytest.mark.parametrize("index", CASES)
def test_float64_is_close_to_the_rloss_extension(index):
    image = torch.from_numpy(REFERENCE[f"image_{index}"]).double()
    values = torch.from_numpy(REFERENCE[f"values_{index}"]).double()
    sigma_rgb, sigma_xy = (float(s) for s in REFERENCE[f"sigmas_{index}"])
    reference = torch.from_numpy(REFERENCE[f"output_{index}"]).double()
    out = bilateral_filter(image, values, sigma_rgb, sigma_xy)
    assert (out - reference).abs().max() / reference.abs().max() < 1e-4


@pytest.mark.cuda
@pytest.mark.parametrize("index", CASES)
def test_cuda_matches_the_rloss_extension(index):
    out, reference = run_case(index, "cuda")
    assert (out - reference).abs().max() / reference.abs().max() < 1e-4
