"""ScaledBernoulliKeyMask: shape, dtype, device, seeding, block structure, ratio, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mcc.attention import ScaledBernoulliKeyMask


@pytest.mark.parametrize("grid", [(28, 28), (14, 14), (20, 30), (7, 5), (1, 1)])
@pytest.mark.parametrize("scale", [1, 2, 4, 7])
def test_shape_dtype_and_block_structure(grid, scale):
    mask = ScaledBernoulliKeyMask(0.5, scale)(3, grid, 5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 5, grid[0] * grid[1])
    assert mask.dtype == torch.bool and mask.device.type == "cpu"
    cells = mask.reshape(3, 5, *grid)
    # Every token equals the top-left token of its scale x scale cell (nearest upsampling, then crop).
    rows = torch.arange(grid[0]) // scale * scale
    cols = torch.arange(grid[1]) // scale * scale
    corner = cells[:, :, rows][:, :, :, cols]
    assert torch.equal(cells, corner)


def test_coarse_grid_has_ceil_cells():
    mask = ScaledBernoulliKeyMask(0.5, 4)(64, (14, 14), 1, generator=torch.Generator().manual_seed(1))
    cells = mask.reshape(64, 14, 14)[:, ::4, ::4]
    assert cells.shape[-2:] == (math.ceil(14 / 4), math.ceil(14 / 4))
    # The cropped last cells (2 tokens wide) are cells of their own, not copies of a neighbour.
    assert not torch.equal(cells[..., 2], cells[..., 3])


def test_reproducible_under_a_seed_and_different_across_seeds():
    sampler = ScaledBernoulliKeyMask(0.75, 4)
    a = sampler(2, (28, 28), 8, generator=torch.Generator().manual_seed(42))
    b = sampler(2, (28, 28), 8, generator=torch.Generator().manual_seed(42))
    c = sampler(2, (28, 28), 8, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.75, 0.95])
def test_empirical_ratio(ratio):
    mask = ScaledBernoulliKeyMask(ratio, 4)(64, (28, 28), 8, generator=torch.Generator().manual_seed(0))
    # 64*8*49 = 25088 independent cells: the standard error of the mean is below 0.003.
    assert abs(mask.float().mean().item() - ratio) < 0.015
    if ratio == 0.0:
        assert not mask.any()


def test_device_argument():
    mask = ScaledBernoulliKeyMask(0.5)(1, (8, 8), 2, device="cpu")
    assert mask.device.type == "cpu"


@pytest.mark.cuda
def test_cuda_device_and_generator():
    generator = torch.Generator(device="cuda").manual_seed(0)
    a = ScaledBernoulliKeyMask(0.5)(2, (28, 28), 8, generator=generator)
    assert a.device.type == "cuda"
    seeded = torch.Generator().manual_seed(0)
    cpu = ScaledBernoulliKeyMask(0.5)(2, (28, 28), 8, generator=seeded, device="cuda")
    assert cpu.device.type == "cuda"


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match="ratio"):
        ScaledBernoulliKeyMask(ratio)


@pytest.mark.parametrize("scale", [0, -2, 1.5])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        ScaledBernoulliKeyMask(0.5, scale)


def test_bad_call_arguments():
    sampler = ScaledBernoulliKeyMask()
    with pytest.raises(ValueError, match="grid"):
        sampler(1, (0, 4))
    with pytest.raises(ValueError, match="batch_size"):
        sampler(0, (4, 4))
    with pytest.raises(ValueError, match="num_views"):
        sampler(1, (4, 4), num_views=0)
