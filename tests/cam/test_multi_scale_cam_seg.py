"""CoSA's teacher pass: CAMs as multi_scale_cam, segmentation logits added over flips, summed over scales."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mcc.cam import multi_scale_cam, multi_scale_cam_seg

cuda = pytest.mark.cuda
WEIGHT = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))


def fn(images):
    # a position-dependent map so that flips matter: pooled colours times a ramp across the width
    maps = torch.einsum("kc,bchw->bkhw", WEIGHT, F.avg_pool2d(images, 8))
    maps = maps * torch.linspace(0.5, 1.5, maps.shape[-1])
    return maps[:, 1:4], maps[:, 4:], maps[:, :4] * 3 - 1  # cam, cam_aux, seg (background first)


def cam_only(images):
    cam, cam_aux, _ = fn(images)
    return cam, cam_aux


def seg_by_hand(images, scales, flip):
    height, width = images.shape[-2:]
    total = 0
    for s in scales:
        for mirrored in (False, True) if flip else (False,):
            x = images.flip(-1) if mirrored else images
            x = F.interpolate(x, size=(int(s * height), int(s * width)), mode="bilinear", align_corners=False)
            seg = F.interpolate(fn(x)[2], size=(height, width), mode="bilinear", align_corners=False)
            total = total + (seg.flip(-1) if mirrored else seg)  # added, not maximised
    return total


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("scales", [(1.0, 0.5, 1.5), (1.0,), (0.75, 1.25)])
def test_cams_are_multi_scale_cam_and_seg_is_the_sum(scales, flip):
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    cam, cam_aux, seg = multi_scale_cam_seg(fn, images, scales, flip)
    reference_cam, reference_aux = multi_scale_cam(cam_only, images, scales, flip)
    assert torch.equal(cam, reference_cam) and torch.equal(cam_aux, reference_aux)
    torch.testing.assert_close(seg, seg_by_hand(images, scales, flip), rtol=1e-5, atol=1e-5)
    assert seg.shape == (2, 4, 48, 64) and (seg < 0).any()  # no ReLU, no normalisation


def test_aux_from_last_scale_reproduces_the_published_overwrite():
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    scales = (1.0, 0.5, 1.5)
    cam, cam_aux, seg = multi_scale_cam_seg(fn, images, scales, aux_from_last_scale=True)
    _, last_scale_aux = multi_scale_cam(cam_only, images, (1.5,))
    assert torch.equal(cam_aux, last_scale_aux)
    fixed = multi_scale_cam_seg(fn, images, scales)
    assert torch.equal(cam, fixed[0]) and torch.equal(seg, fixed[2]) and not torch.equal(cam_aux, fixed[1])


def test_no_gradient():
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    outputs = multi_scale_cam_seg(fn, images)
    assert not any(t.requires_grad for t in outputs)


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (lambda x: fn(x)[:2], "tuple"),
        (lambda x: fn(x)[0], "tuple"),
        (lambda x: (*fn(x)[:2], fn(x)[2][:1]), "seg_logits"),
    ],
)
def test_bad_fn_output_raises(returned, match):
    with pytest.raises(ValueError, match=match):
        multi_scale_cam_seg(returned, torch.rand(2, 3, 32, 32))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="images"):
        multi_scale_cam_seg(fn, torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="scales"):
        multi_scale_cam_seg(fn, torch.rand(1, 3, 32, 32), ())


@cuda
def test_cuda():
    images = torch.rand(2, 3, 32, 32)
    cpu = multi_scale_cam_seg(fn, images)

    def cuda_fn(x):
        return tuple(t.cuda() for t in fn(x.cpu()))

    gpu = multi_scale_cam_seg(cuda_fn, images.cuda())
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu())
