import math

import pytest
import torch
from par_reference import reference_affinity, reference_par

from mcc.refine import PAR

cuda = pytest.mark.cuda


def two_region_image(height=24, width=32, split=None):
    """Left part dark red, right part light blue, shape (1, 3, H, W) in [0, 1]."""
    split = width // 2 if split is None else split
    image = torch.empty(1, 3, height, width)
    image[..., :split] = torch.tensor([0.8, 0.1, 0.1])[:, None, None]
    image[..., split:] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    return image


@pytest.mark.parametrize(
    "size, mask_size, dilations, num_iter",
    [
        ((20, 28), (20, 28), (1, 2, 4, 8, 12, 24), 3),
        ((17, 23), (5, 6), (1, 2, 4, 8, 12, 24), 2),  # odd sizes, masks upsampled first
        ((5, 7), (5, 7), (1, 2, 4, 8, 12, 24), 2),  # dilations larger than the image
        ((16, 16), (8, 8), (1, 3), 5),
        ((1, 9), (1, 9), (1, 2), 1),
    ],
)
def test_par_matches_plain_unfold(size, mask_size, dilations, num_iter):
    images = torch.rand(2, 3, *size)
    masks = torch.rand(2, 3, *mask_size)
    par = PAR(dilations=dilations, num_iter=num_iter)
    expected = reference_par(images, masks, dilations, num_iter)
    torch.testing.assert_close(par(images, masks), expected, rtol=1e-5, atol=1e-6)


def test_affinity_matches_plain_unfold():
    images = torch.rand(2, 3, 19, 21)
    par = PAR(w1=0.5, w2=0.1)
    torch.testing.assert_close(par.affinity(images), reference_affinity(images, w1=0.5, w2=0.1))


@pytest.mark.parametrize("w2", [0.0, 0.01, 0.5])
def test_affinity_rows_sum_to_one_plus_w2(w2):
    affinity = PAR(w2=w2).affinity(torch.rand(1, 3, 9, 11))
    assert affinity.shape == (1, 48, 9, 11)
    torch.testing.assert_close(affinity.sum(1), torch.full((1, 9, 11), 1 + w2))


def test_neighbour_weights_of_one_pixel_by_hand():
    # 3x3 grey image, centre 0, left column 1: of the centre's 8 neighbours (dilation 1) 3 are 1, 5 are 0.
    image = torch.zeros(1, 3, 3, 3)
    image[..., :, 0] = 1.0
    par = PAR(dilations=(1,), w1=3.0, w2=0.5)
    weights = par.affinity(image)[0, :, 1, 1]

    # Neighbour values 1,0,0,1,0,1,0,0: unbiased std sqrt(15/56) -> logit -(1/std/3)^2 = -56/135 for the 1s.
    logit_one = -56 / 135
    z = 5 + 3 * math.exp(logit_one)
    image_term = [math.exp(logit_one) / z if v else 1 / z for v in (1, 0, 0, 1, 0, 1, 0, 0)]
    # Distances sqrt2,1,sqrt2,1,1,sqrt2,1,sqrt2: unbiased std ((sqrt2 - 1) / 2) * sqrt(8 / 7).
    distances = [math.sqrt(2) if k in (0, 2, 5, 7) else 1.0 for k in range(8)]
    std = (math.sqrt(2) - 1) / 2 * math.sqrt(8 / 7)
    position = [math.exp(-((p / std / 3.0) ** 2)) for p in distances]
    position = [p / sum(position) for p in position]
    expected = torch.tensor([a + 0.5 * b for a, b in zip(image_term, position, strict=True)])
    torch.testing.assert_close(weights, expected)
    assert par.offsets[:3] == ((-1, -1), (-1, 0), (-1, 1))


def test_std_is_per_pixel_and_per_channel():
    # Only the red channel varies around the centre: its term is averaged with two zero terms.
    image = torch.zeros(1, 3, 3, 3)
    image[:, 0, :, 0] = 1.0
    weights = PAR(dilations=(1,), w1=3.0, w2=0.0).affinity(image)[0, :, 1, 1]
    logit_one = -56 / 135 / 3
    z = 5 + 3 * math.exp(logit_one)
    expected = torch.tensor([math.exp(logit_one) / z if v else 1 / z for v in (1, 0, 0, 1, 0, 1, 0, 0)])
    torch.testing.assert_close(weights, expected)


@pytest.mark.parametrize("num_iter, w2", [(10, 0.0), (10, 0.01), (3, 0.2)])
def test_constant_image_keeps_constant_mask(num_iter, w2):
    # Rows of the kernel sum to 1 + w2 (published), so a constant mask is scaled by (1 + w2)^num_iter.
    images = torch.full((1, 3, 20, 30), 0.4)
    masks = torch.full((1, 2, 20, 30), 0.25)
    out = PAR(num_iter=num_iter, w2=w2)(images, masks)
    torch.testing.assert_close(out, torch.full_like(masks, 0.25 * (1 + w2) ** num_iter))


def test_mask_does_not_leak_across_an_edge():
    images = two_region_image(24, 40, split=20)
    left = torch.zeros(1, 1, 24, 40)
    left[..., :20] = 1.0
    masks = torch.cat([left, 1 - left], dim=1)
    out = PAR()(images, masks)
    # Only the small position term (w2 = 0.01) crosses the edge.
    assert out[0, 0, :, 20:].max() < 0.05
    assert out[0, 1, :, :20].max() < 0.05
    assert torch.equal(out.argmax(1), masks.argmax(1))
    # On a flat image the same mask does spread across the old edge.
    flat = PAR()(torch.full_like(images, 0.5), masks)
    assert flat[0, 0, :, 20:].max() > 0.3


def test_mask_fills_its_region_up_to_the_edge():
    # A seed inside the left region grows over that region but stops at the colour edge.
    images = two_region_image(24, 40, split=20)
    seed = torch.zeros(1, 2, 24, 40)
    seed[:, 1] = 0.5
    seed[:, 0, :, :13] = 1.0  # covers 65% of the left region: its region mean beats 0.5
    assert (seed.argmax(1)[0, :, :20] == 0).float().mean() == 0.65
    label = PAR(num_iter=20)(images, seed).argmax(1)[0]
    assert (label[:, :20] == 0).all()
    assert (label[:, 20:] == 1).all()


def test_zero_iterations_only_resizes():
    images = torch.rand(1, 3, 9, 13)
    masks = torch.rand(1, 2, 3, 5)
    expected = torch.nn.functional.interpolate(masks, size=(9, 13), mode="bilinear", align_corners=True)
    torch.testing.assert_close(PAR(num_iter=0)(images, masks), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    images = torch.rand(1, 3, 12, 14)
    masks = torch.rand(1, 3, 12, 14).softmax(1)
    out = PAR(num_iter=3)(images.to(dtype), masks.to(dtype))
    assert out.dtype == dtype
    expected = reference_par(images.to(dtype).float(), masks.to(dtype).float(), num_iter=3)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


def test_autocast_is_switched_off_inside():
    images = torch.rand(1, 3, 12, 14)
    masks = torch.rand(1, 3, 12, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = PAR(num_iter=2)(images, masks)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference_par(images, masks, num_iter=2), rtol=1e-5, atol=1e-6)


def test_gradient_matches_plain_unfold():
    images = torch.rand(1, 3, 10, 12)
    masks = torch.rand(1, 2, 10, 12, requires_grad=True)
    weight = torch.rand(1, 2, 10, 12)
    (PAR(num_iter=2)(images, masks) * weight).sum().backward()
    fast = masks.grad.clone()
    masks.grad = None
    (reference_par(images, masks, num_iter=2) * weight).sum().backward()
    torch.testing.assert_close(fast, masks.grad, rtol=1e-5, atol=1e-6)


def test_does_not_modify_inputs():
    images, masks = torch.rand(1, 3, 8, 8), torch.rand(1, 2, 8, 8)
    images_copy, masks_copy = images.clone(), masks.clone()
    PAR(num_iter=2)(images, masks)
    assert torch.equal(images, images_copy) and torch.equal(masks, masks_copy)


@pytest.mark.parametrize(
    "images_shape, masks_shape, match",
    [
        ((3, 8, 8), (1, 2, 8, 8), "images"),
        ((1, 3, 8, 8), (2, 2, 8, 8), "masks"),
        ((1, 3, 8, 8), (2, 8, 8), "masks"),
    ],
)
def test_bad_shapes_raise(images_shape, masks_shape, match):
    with pytest.raises(ValueError, match=match):
        PAR()(torch.rand(images_shape), torch.rand(masks_shape))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dilations": ()}, "dilations"),
        ({"dilations": (1, 0)}, "dilations"),
        ({"dilations": (1.5,)}, "dilations"),
        ({"num_iter": -1}, "num_iter"),
        ({"w1": 0.0}, "w1"),
        ({"w2": -0.1}, "w2"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PAR(**kwargs)


def test_default_neighbourhood():
    par = PAR()
    assert par.num_neighbours == 48
    assert par.offsets[-1] == (24, 24)
    assert par.distances[:2] == (math.sqrt(2), 1.0)


@cuda
def test_cuda_matches_cpu():
    images, masks = torch.rand(2, 3, 20, 24), torch.rand(2, 3, 10, 12)
    out = PAR(num_iter=3)(images.cuda(), masks.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), PAR(num_iter=3)(images, masks), rtol=1e-4, atol=1e-5)


@cuda
def test_cuda_peak_memory_has_no_per_class_unfold():
    images = torch.rand(1, 3, 96, 128, device="cuda")
    masks = torch.rand(1, 21, 96, 128, device="cuda")
    one_map = 96 * 128 * 4
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    PAR()(images, masks)
    torch.cuda.synchronize()
    peak_maps = (torch.cuda.max_memory_allocated() - before) / one_map
    # Affinity (48 maps) + a few copies of the 21 masks; the unfold form needs 2 * 48 * 21 maps.
    assert peak_maps < 48 + 6 * 21


def test_float64_is_refined_in_float64():
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(1, 3, 21, 17, generator=generator, dtype=torch.float64)
    masks = torch.rand(1, 3, 21, 17, generator=generator, dtype=torch.float64)
    out = PAR(dilations=(1, 2, 4), num_iter=3)(images, masks)
    assert out.dtype == torch.float64
    expected = reference_par(images, masks, dilations=(1, 2, 4), num_iter=3)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
