"""bilateral_filter and the permutohedral lattice: contract, properties, and a brute-force Gaussian filter.

The lattice approximates ``c * sum_j exp(-|f_i - f_j|^2 / 2) v_j`` only coarsely (the price of its linear
cost); the bounds below were measured on these inputs (float64) and leave some margin:
* the lattice matrix W (one-hot responses) against the best multiple c * G of the exact Gaussian matrix:
  c in 0.43-0.60 and relative Frobenius error 0.14-0.22;
* |W - W^T|_F / |W|_F: up to 0.16 (blurs along different axes do not commute where lattice points are
  missing); the blur in reverse order gives W^T exactly.
"""

import math

import pytest
import torch

from mcc.refine import PermutohedralLattice, bilateral_filter
from mcc.refine.bilateral import _filter as batched_filter
from mcc.refine.bilateral import bilateral_features


def smooth_image(batch, height, width, seed=0, dtype=torch.float64):
    """RGB 0-255 with slowly varying colours (where the lattice is most accurate)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, height, dtype=dtype), torch.linspace(0, 1, width, dtype=dtype), indexing="ij"
    )
    phase = torch.rand(batch, 3, 1, 1, generator=g, dtype=dtype) * 6
    return 127.5 + 100 * torch.sin(3 * xx + 2 * yy + phase) * torch.cos(2 * yy - xx + phase)


def random_image(batch, height, width, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=g).to(dtype)


def lattice_matrix(image, sigma_rgb, sigma_xy, reverse=False):
    """The filter as an (N, N) matrix: column j is the response to the one-hot image at pixel j."""
    _, _, height, width = image.shape
    n = height * width
    features = bilateral_features(image, sigma_rgb, sigma_xy)
    lattice = PermutohedralLattice(features)
    eye = torch.eye(n, dtype=image.dtype).unsqueeze(0)
    return lattice.filter(eye, reverse=reverse)[0]


def gaussian_matrix(image, sigma_rgb, sigma_xy):
    features = bilateral_features(image, sigma_rgb, sigma_xy)[0]
    return torch.exp(-(torch.cdist(features, features) ** 2) / 2)


# ---- contract ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 13, 11), (3, 2, 8, 8)])
def test_shapes_and_dtypes(shape, dtype):
    batch, channels, height, width = shape
    image = random_image(batch, height, width, dtype=dtype)
    values = torch.rand(shape, dtype=dtype)
    out = bilateral_filter(image, values, 15.0, 50.0)
    assert out.shape == shape and out.dtype == dtype and torch.isfinite(out).all()
    assert (out > 0).all()


def test_float32_and_float64_agree():
    image = random_image(2, 17, 19)
    values = torch.rand(2, 3, 17, 19, dtype=torch.float64)
    out64 = bilateral_filter(image, values, 15.0, 50.0)
    out32 = bilateral_filter(image.float(), values.float(), 15.0, 50.0)
    assert (out32.double() - out64).abs().max() / out64.abs().max() < 1e-4


def test_batch_and_channels_are_independent():
    image = random_image(3, 11, 14)
    values = torch.rand(3, 4, 11, 14)
    out = bilateral_filter(image.float(), values, 5.0, 3.0)
    for b in range(3):
        for k in range(4):
            single = bilateral_filter(image[b : b + 1].float(), values[b : b + 1, k : k + 1], 5.0, 3.0)
            assert torch.equal(single[0, 0], out[b, k])


def test_gradient_is_the_transposed_filter():
    image = smooth_image(1, 9, 10)
    values = torch.rand(1, 2, 9, 10, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 2, 9, 10, dtype=torch.float64)
    (bilateral_filter(image, values, 20.0, 4.0) * weights).sum().backward()
    matrix = lattice_matrix(image, 20.0, 4.0)
    expected = (weights[0].reshape(2, -1) @ matrix).view(1, 2, 9, 10)
    torch.testing.assert_close(values.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 5), 15.0, 50.0), "same B, H, W"),
        ((torch.rand(2, 3, 4, 4), torch.rand(1, 2, 4, 4), 15.0, 50.0), "same B, H, W"),
        ((torch.rand(1, 4, 4, 4), torch.rand(1, 2, 4, 4), 15.0, 50.0), "image"),
        ((torch.rand(3, 4, 4), torch.rand(1, 2, 4, 4), 15.0, 50.0), "image"),
        ((torch.rand(1, 3, 4, 4), torch.rand(2, 4, 4), 15.0, 50.0), "values"),
        ((torch.randint(0, 255, (1, 3, 4, 4)), torch.rand(1, 2, 4, 4), 15.0, 50.0), "image"),
        ((torch.rand(1, 3, 4, 4), torch.ones(1, 2, 4, 4, dtype=torch.long), 15.0, 50.0), "values"),
        ((torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), 0.0, 50.0), "sigma_rgb"),
        ((torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), 15.0, -1.0), "sigma_xy"),
        ((torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), float("nan"), 50.0), "sigma_rgb"),
        ((torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), 15.0, "50"), "sigma_xy"),
        ((torch.full((1, 3, 4, 4), float("inf")), torch.rand(1, 2, 4, 4), 15.0, 50.0), "image"),
        ((torch.rand(1, 3, 4, 4), torch.rand(1, 0, 4, 4), 15.0, 50.0), "values"),
    ],
)
def test_bad_arguments_raise(args, match):
    with pytest.raises(ValueError, match=match):
        bilateral_filter(*args)


def test_lattice_validates_its_inputs():
    with pytest.raises(ValueError, match="features"):
        PermutohedralLattice(torch.rand(4, 5))
    with pytest.raises(ValueError, match="features"):
        PermutohedralLattice(torch.rand(1, 4, 5).half())
    lattice = PermutohedralLattice(torch.rand(2, 6, 3))
    with pytest.raises(ValueError, match="values"):
        lattice.filter(torch.rand(2, 5, 1))


# ---- properties ----------------------------------------------------------------------------------------


def test_constant_image_and_constant_values():
    # Constant colour: a purely spatial filter, symmetric under the image's flips; constant values give
    # a multiple of the response to ones, and pixels away from the border all receive the same total.
    image = torch.full((1, 3, 30, 30), 100.0, dtype=torch.float64)
    ones = bilateral_filter(image, torch.ones(1, 1, 30, 30, dtype=torch.float64), 10.0, 3.0)
    threes = bilateral_filter(image, torch.full((1, 1, 30, 30), 3.0, dtype=torch.float64), 10.0, 3.0)
    torch.testing.assert_close(threes, 3 * ones, rtol=1e-12, atol=0)
    interior = ones[0, 0, 12:18, 12:18]
    # Lattice points sit at a finite spacing: the interior total varies by about 20 % (measured 0.20).
    assert (interior.max() - interior.min()) / interior.mean() < 0.25
    # The total at the corner sees about a quarter of the Gaussian's mass.
    assert 0.15 < ones[0, 0, 0, 0] / interior.mean() < 0.4


def test_linear_in_values():
    image = random_image(2, 12, 9)
    u = torch.rand(2, 3, 12, 9, dtype=torch.float64)
    v = torch.randn(2, 3, 12, 9, dtype=torch.float64)
    combined = bilateral_filter(image, 2.5 * u - 0.75 * v, 15.0, 5.0)
    separate = 2.5 * bilateral_filter(image, u, 15.0, 5.0) - 0.75 * bilateral_filter(image, v, 15.0, 5.0)
    torch.testing.assert_close(combined, separate, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["smooth", "random"])
def test_kernel_is_symmetric_up_to_the_blur_order(kind):
    make = smooth_image if kind == "smooth" else random_image
    image = make(1, 11, 12)
    forward = lattice_matrix(image, 15.0, 5.0)
    backward = lattice_matrix(image, 15.0, 5.0, reverse=True)
    # Reversing the blur order transposes the filter exactly (splat and slice weights differ by alpha).
    torch.testing.assert_close(backward, forward.T, rtol=1e-12, atol=1e-14)
    asymmetry = (forward - forward.T).norm() / forward.norm()
    assert asymmetry < 0.2
    # ... and it is far from arbitrary: a random matrix with the same entries is not close to symmetric.
    shuffled = forward.flatten()[torch.randperm(forward.numel())].view_as(forward)
    assert (shuffled - shuffled.T).norm() / shuffled.norm() > 5 * asymmetry


def test_large_sigma_tends_to_a_global_average():
    image = random_image(2, 10, 13)
    values = torch.rand(2, 3, 10, 13, dtype=torch.float64)
    ones = torch.ones(2, 1, 10, 13, dtype=torch.float64)
    for sigma, tolerance in ((1e3, 1e-2), (1e5, 1e-4)):
        out = bilateral_filter(image, values, sigma, sigma) / bilateral_filter(image, ones, sigma, sigma)
        mean = values.mean(dim=(2, 3), keepdim=True).expand_as(out)
        assert (out - mean).abs().max() < tolerance
    # With every feature near one lattice point the lattice returns the plain sum times about 0.98.
    total = bilateral_filter(image, values, 1e5, 1e5)
    ratio = total / values.sum(dim=(2, 3), keepdim=True)
    assert (ratio.max() - ratio.min()) / ratio.mean() < 1e-2 and 0.9 < ratio.mean() < 1.0


@pytest.mark.parametrize(
    ("kind", "sigma_rgb", "sigma_xy", "size"),
    [
        ("smooth", 15.0, 5.0, (12, 11)),
        ("smooth", 30.0, 3.0, (10, 13)),
        ("smooth", 15.0, 50.0, (9, 14)),
        ("random", 15.0, 5.0, (12, 11)),
        ("random", 5.0, 121.0, (11, 11)),
        ("random", 1000.0, 2.0, (12, 12)),
    ],
)
def test_brute_force_gaussian_within_the_lattice_approximation(kind, sigma_rgb, sigma_xy, size):
    make = smooth_image if kind == "smooth" else random_image
    image = make(1, *size)
    lattice = lattice_matrix(image, sigma_rgb, sigma_xy)
    exact = gaussian_matrix(image, sigma_rgb, sigma_xy)
    scale = (lattice * exact).sum() / (exact * exact).sum()
    error = (lattice - scale * exact).norm() / (scale * exact).norm()
    assert 0.4 < scale < 0.65
    assert error < 0.25


def test_spatial_width_matches_sigma_xy():
    # Constant image: the impulse response is a spatial Gaussian whose fitted std is sigma_xy (+-10 %).
    size, centre = 41, 20
    image = torch.full((1, 3, size, size), 80.0, dtype=torch.float64)
    impulse = torch.zeros(1, 1, size, size, dtype=torch.float64)
    impulse[..., centre, centre] = 1
    for sigma_xy in (3.0, 5.0):
        response = bilateral_filter(image, impulse, 10.0, sigma_xy)[0, 0]
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        r2 = ((yy - centre) ** 2 + (xx - centre) ** 2).double()
        keep = (response > 1e-8) & (r2 < 9 * sigma_xy**2)
        design = torch.stack([torch.ones_like(r2[keep]), r2[keep]], 1)
        slope = torch.linalg.lstsq(design, response[keep].log().unsqueeze(1)).solution[1, 0]
        fitted = math.sqrt(-1 / (2 * slope))
        assert abs(fitted / sigma_xy - 1) < 0.1


def test_simd_padding_only_adds_points_that_receive_no_splat():
    features = bilateral_features(random_image(1, 5, 7), 15.0, 50.0)  # 35 pixels: 1 padding lane
    padded, plain = PermutohedralLattice(features), PermutohedralLattice(features, simd_padding=False)
    assert padded.num_points >= plain.num_points
    values = torch.rand(1, 35, 2, dtype=torch.float64)
    a, b = padded.filter(values), plain.filter(values)
    assert (a - b).abs().max() / b.abs().max() < 0.05


@pytest.mark.cuda
def test_cuda_matches_cpu():
    image = random_image(2, 37, 41, dtype=torch.float32)
    values = torch.rand(2, 3, 37, 41)
    cpu = bilateral_filter(image, values, 15.0, 50.0)
    gpu = bilateral_filter(image.cuda(), values.cuda(), 15.0, 50.0)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() / cpu.abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_products_equal_the_plain_gathers(dtype):
    # The default splat and slice are CSR matrix products; the plain twin uses index_add and gathers.
    features = bilateral_features(random_image(2, 23, 19, dtype=dtype), 15.0, 50.0)
    lattice = PermutohedralLattice(features)
    values = torch.rand(2, 23 * 19, 3, dtype=dtype)
    assert torch.equal(lattice.filter(values), lattice.filter(values, plain=True))
    assert torch.equal(lattice.filter(values, reverse=True), lattice.filter(values, reverse=True, plain=True))


def test_scaled_lattice_folds_the_factors_in():
    features = bilateral_features(random_image(2, 9, 13), 15.0, 50.0)
    lattice = PermutohedralLattice(features)
    before, after = torch.rand(2, 9 * 13, dtype=torch.float64), torch.rand(2, 9 * 13, dtype=torch.float64)
    values = torch.rand(2, 9 * 13, 3, dtype=torch.float64)
    expected = after.unsqueeze(-1) * lattice.filter(before.unsqueeze(-1) * values)
    torch.testing.assert_close(lattice.scaled(before, after).filter(values), expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="after"):
        lattice.scaled(before, after[:, :5])


def test_contract_signature():
    import inspect

    import mcc.refine

    params = inspect.signature(mcc.refine.bilateral_filter).parameters
    assert list(params) == ["image", "values", "sigma_rgb", "sigma_xy"]
    assert all(p.default is inspect.Parameter.empty for p in params.values())
    assert "bilateral_filter" in mcc.refine.__all__ and inspect.getdoc(mcc.refine.bilateral_filter)


# ---- mixed precision, host syncs, CUDA -------------------------------------------------------------------


def test_bf16_autocast_gives_the_float32_result():
    # The sparse products have no bfloat16 kernel: the lattice runs in float32 whatever the autocast.
    image = random_image(2, 13, 11, dtype=torch.float32)
    values = torch.rand(2, 3, 13, 11)
    expected = bilateral_filter(image, values, 15.0, 50.0)
    features = bilateral_features(image, 15.0, 50.0)
    flat = values.permute(0, 2, 3, 1).reshape(2, 13 * 11, 3)
    lattice_expected = PermutohedralLattice(features).filter(flat)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bilateral_filter(image, values, 15.0, 50.0)
        lattice_out = PermutohedralLattice(features).filter(flat)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert lattice_out.dtype == torch.float32 and torch.equal(lattice_out, lattice_expected)


def test_dense_energy_loss_under_bf16_autocast_gives_the_float32_result():
    from mcc.losses import dense_energy_loss

    image = random_image(2, 16, 20, dtype=torch.float32)
    logits = torch.randn(2, 4, 16, 20, requires_grad=True)
    label = torch.randint(0, 4, (2, 16, 20))
    expected = dense_energy_loss(image, logits, label)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dense_energy_loss(image, logits, label)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.dtype == torch.float32 and torch.equal(loss, expected) and torch.equal(grad, expected_grad)


def test_host_syncs_are_two_per_lattice_and_none_per_filter():
    # The key range (with the finiteness check) and the number of points; filtering waits for nothing.
    from host_syncs import count_host_syncs

    image, values = random_image(2, 23, 19, dtype=torch.float32), torch.rand(2, 3, 23, 19)
    with count_host_syncs() as counts:
        lattice = PermutohedralLattice(bilateral_features(image, 15.0, 50.0))
    assert sum(counts.values()) == 2
    with count_host_syncs() as counts:
        for _ in range(3):
            lattice.filter(torch.rand(2, 23 * 19, 3))
    assert sum(counts.values()) == 0
    with count_host_syncs() as counts:
        bilateral_filter(image, values, 15.0, 50.0)
    assert sum(counts.values()) == 2 * 2  # on the CPU one lattice per image
    with count_host_syncs() as counts:
        batched_filter(image, values, 15.0, 50.0)
    assert sum(counts.values()) == 2  # the CUDA path: one lattice for the batch


def test_batched_computation_is_bit_identical_to_one_image_at_a_time():
    # The CUDA path (one lattice for the batch), run here on the CPU, which goes image by image.
    image, values = random_image(3, 21, 17, dtype=torch.float32), torch.rand(3, 4, 21, 17)
    expected = bilateral_filter(image, values, 15.0, 50.0)
    assert torch.equal(batched_filter(image, values, 15.0, 50.0), expected)
    for i in range(3):
        assert torch.equal(
            bilateral_filter(image[i : i + 1], values[i : i + 1], 15.0, 50.0), expected[i : i + 1]
        )


def test_non_finite_image_is_named_without_a_separate_check():
    image = random_image(1, 5, 7, dtype=torch.float32)
    image[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="image must be finite"):
        bilateral_filter(image, torch.rand(1, 2, 5, 7), 15.0, 50.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reordered_and_interleaved_lattices_give_the_same_bits(dtype):
    # Renumbering the points or the value rows changes no sum (the CRF uses both).
    features = bilateral_features(random_image(3, 17, 13, dtype=dtype), 15.0, 50.0)  # 221 px: padding
    lattice = PermutohedralLattice(features)
    values = torch.rand(3, 17 * 13, 4, dtype=dtype)
    expected = lattice.filter(values)
    assert torch.equal(lattice.reordered().filter(values), expected)
    assert torch.equal(lattice.interleaved().filter(values), expected)
    assert torch.equal(lattice.reordered().interleaved().filter(values), expected)
    rows = values.transpose(0, 1).reshape(-1, 4)
    out = lattice.interleaved().filter_rows(rows).view(17 * 13, 3, 4).transpose(0, 1)
    assert torch.equal(out, expected)
    before, after = torch.rand(3, 17 * 13, dtype=dtype), torch.rand(3, 17 * 13, dtype=dtype)
    scaled = lattice.scaled(before, after).filter(values)
    assert torch.equal(lattice.interleaved().scaled(before, after).filter(values), scaled)
    assert torch.equal(lattice.reordered().scaled(before, after).filter(values, plain=True), scaled)


def test_filter_rows_reuses_the_buffers_it_is_given():
    lattice = PermutohedralLattice(bilateral_features(random_image(1, 9, 8, dtype=torch.float32), 15.0, 50.0))
    values = torch.rand(72, 3)
    work = [torch.full((lattice.num_points + 1, 3), float("nan")) for _ in range(2)]
    out = torch.full((72, 3), float("nan"))
    result = lattice.filter_rows(values, out=out, work=work)
    assert result.data_ptr() == out.data_ptr()
    assert torch.equal(result, lattice.filter(values[None])[0])


@pytest.mark.cuda
def test_cuda_batch_equals_one_image_at_a_time_and_autocast_changes_nothing():
    image = random_image(3, 29, 31, dtype=torch.float32).cuda()
    values = torch.rand(3, 5, 29, 31).cuda()
    batched = bilateral_filter(image, values, 15.0, 50.0)
    for i in range(3):
        alone = bilateral_filter(image[i : i + 1], values[i : i + 1], 15.0, 50.0)
        assert (alone - batched[i : i + 1]).abs().max() <= 1e-6 * alone.abs().max()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        under_autocast = bilateral_filter(image, values, 15.0, 50.0)
    assert under_autocast.dtype == torch.float32
    assert (under_autocast - batched).abs().max() <= 1e-6 * batched.abs().max()


@pytest.mark.parametrize("dim", [2, 5])
def test_fused_products_are_the_same_filter(dim):
    # The first blur folded into the splat matrix and the last into the slice (the dense CRF's spatial
    # kernel on the CPU): the same linear map, summed in another order.
    features = bilateral_features(random_image(2, 21, 17, dtype=torch.float64), 15.0, 50.0)[..., :dim]
    lattice = PermutohedralLattice(features.contiguous())
    products = lattice._fused_products()
    assert len(products) == dim + 1
    values = torch.rand(2 * 21 * 17, 3, dtype=torch.float64)
    fused = values
    for matrix in products:
        fused = torch.sparse.mm(matrix, fused)
    expected = lattice.filter_rows(values)
    torch.testing.assert_close(fused, expected, rtol=1e-13, atol=1e-13)
    single = PermutohedralLattice(features.float().contiguous())
    fused32 = values.float()
    for matrix in single._fused_products():
        fused32 = torch.sparse.mm(matrix, fused32)
    assert not torch.equal(fused32, single.filter_rows(values.float()))  # another summation order
    torch.testing.assert_close(fused32, single.filter_rows(values.float()), rtol=2e-6, atol=1e-6)
