import pytest
import torch
import torch.nn.functional as F

from mcc.cam import multi_scale_cam

cuda = pytest.mark.cuda


class PatchCam(torch.nn.Module):
    """A tiny 'classifier': 4x4 average patches, a linear map to C classes (values of both signs)."""

    def __init__(self, num_classes=3, patch=4):
        super().__init__()
        self.patch = patch
        self.proj = torch.nn.Conv2d(3, num_classes, 1)
        self.calls = []

    def forward(self, images):
        self.calls.append(tuple(images.shape))
        cam = self.proj(F.avg_pool2d(images, self.patch))
        return cam, -cam[:, :2]


def reference_cam(cam_fn, images, scales, flip):
    """One call per scale and per flip, then the published merge."""
    batch, _, height, width = images.shape
    totals = [0, 0]
    for s in scales:
        x = F.interpolate(
            images, size=(int(s * height), int(s * width)), mode="bilinear", align_corners=False
        )
        outputs = [cam_fn(x)]
        if flip:
            outputs.append(cam_fn(x.flip(-1)))
        for i in range(2):
            maps = [
                F.interpolate(o[i], size=(height, width), mode="bilinear", align_corners=False)
                for o in outputs
            ]
            merged = torch.maximum(maps[0], maps[1].flip(-1)) if flip else maps[0]
            totals[i] = totals[i] + merged.relu()
    result = []
    for total in totals:
        total = total - total.amin(dim=(-2, -1), keepdim=True)
        result.append(total / (total.amax(dim=(-2, -1), keepdim=True) + 1e-5))
    return result


@pytest.mark.parametrize(
    "size, scales, flip",
    [((32, 48), (1.0, 0.5, 1.5), True), ((36, 20), (1.0,), False), ((40, 28), (0.5, 1.25), True)],
)
def test_matches_per_flip_reference(size, scales, flip):
    model = PatchCam()
    images = torch.rand(2, 3, *size)
    cam, cam_aux = multi_scale_cam(model, images, scales, flip)
    expected_cam, expected_aux = reference_cam(model, images, scales, flip)
    assert cam.shape == (2, 3, *size) and cam_aux.shape == (2, 2, *size)
    torch.testing.assert_close(cam, expected_cam)
    torch.testing.assert_close(cam_aux, expected_aux)


def test_one_call_per_scale_with_flip_batched():
    model = PatchCam()
    multi_scale_cam(model, torch.rand(2, 3, 32, 48), scales=(1.0, 0.5, 1.5))
    assert model.calls == [(4, 3, 32, 48), (4, 3, 16, 24), (4, 3, 48, 72)]


def test_flip_merge_by_max_by_hand():
    # A map that ignores the image: a ramp 0, 1, 2, 3 along x. Its flip, flipped back, is 3, 2, 1, 0;
    # the max is 3, 2, 2, 3; min-max: (x - 2) / (1 + 1e-5).
    ramp = torch.arange(4.0).expand(1, 1, 2, 4)

    def cam_fn(images):
        return ramp.expand(images.shape[0], 1, 2, 4), None

    cam, cam_aux = multi_scale_cam(cam_fn, torch.rand(1, 3, 2, 4), scales=(1.0,))
    torch.testing.assert_close(cam, torch.tensor([1.0, 0.0, 0.0, 1.0]).expand(1, 1, 2, 4) / (1 + 1e-5))
    assert cam_aux is None


def test_relu_before_the_sum_over_scales():
    # Scale 1 gives (1, -1, -1, -1), scale 2 gives (2, 0.5, -1, -1) (a 2x2 map at either input size).
    def cam_fn(images):
        cam = -torch.ones(images.shape[0], 1, 2, 2)
        cam[:, :, 0, 0] = 1.0 if images.shape[-1] == 2 else 2.0
        cam[:, :, 0, 1] = -1.0 if images.shape[-1] == 2 else 0.5
        return cam, cam

    cam, _ = multi_scale_cam(cam_fn, torch.rand(1, 3, 2, 2), scales=(1.0, 2.0), flip=False)
    # ReLU per scale: sum (3, 0.5, 0, 0). Without it the sum (3, -0.5, -2, -2) would give (1, 0.3, 0, 0).
    torch.testing.assert_close(cam.flatten(), torch.tensor([3.0, 0.5, 0.0, 0.0]) / (3.0 + 1e-5))


def test_min_max_per_image_and_class():
    def cam_fn(images):
        base = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
        cam = torch.stack([base, 10 * base, torch.zeros(2, 2)])[None].repeat(images.shape[0], 1, 1, 1)
        cam[1:] *= 7
        return cam, cam

    cam, _ = multi_scale_cam(cam_fn, torch.rand(2, 3, 2, 2), scales=(1.0,), flip=False)
    expected = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    for i in range(2):
        torch.testing.assert_close(cam[i, 0], expected / (4 + 1e-5))
        torch.testing.assert_close(cam[i, 1], expected * 10 / (40 + 1e-5))
        assert torch.equal(cam[i, 2], torch.zeros(2, 2))  # an all-zero map stays zero, not NaN


def test_no_gradient_and_input_device_and_float32():
    model = PatchCam()
    images = torch.rand(1, 3, 16, 16).bfloat16()
    cam, cam_aux = multi_scale_cam(lambda x: model(x.float()), images)
    assert not cam.requires_grad and not cam_aux.requires_grad
    assert cam.dtype == torch.float32 and cam.device == images.device
    assert 0 <= cam.min() and cam.max() < 1


@pytest.mark.parametrize(
    "images, scales, match",
    [
        (torch.rand(3, 16, 16), (1.0,), "images"),
        (torch.rand(1, 3, 16, 16), (), "scales"),
        (torch.rand(1, 3, 16, 16), (1.0, 0.0), "scales"),
        (torch.rand(1, 3, 16, 16), (0.05,), "scales"),
    ],
)
def test_bad_input_raises(images, scales, match):
    with pytest.raises(ValueError, match=match):
        multi_scale_cam(PatchCam(), images, scales)


def test_bad_cam_fn_output_raises():
    with pytest.raises(ValueError, match="cam_fn"):
        multi_scale_cam(lambda x: (torch.rand(1, 3, 4, 4), None), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="cam_aux"):
        multi_scale_cam(lambda x: (torch.rand(2, 3, 4, 4), torch.rand(4, 4)), torch.rand(1, 3, 16, 16))


@cuda
def test_cuda_result_stays_on_cuda():
    model = PatchCam().cuda()
    images = torch.rand(2, 3, 32, 32, device="cuda")
    cam, cam_aux = multi_scale_cam(model, images)
    assert cam.device.type == "cuda" and cam_aux.device.type == "cuda"
    expected, _ = multi_scale_cam(model.cpu(), images.cpu())
    torch.testing.assert_close(cam.cpu(), expected, rtol=1e-4, atol=1e-5)


def test_float64_maps_stay_float64():
    weight = torch.randn(4, 3, dtype=torch.float64)

    def cam_fn(x):
        maps = torch.einsum("kc,bchw->bkhw", weight, F.avg_pool2d(x, 4))
        return maps, maps

    cam, cam_aux = multi_scale_cam(cam_fn, torch.rand(2, 3, 32, 24, dtype=torch.float64))
    assert cam.dtype == cam_aux.dtype == torch.float64


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("scales", [(1.0, 0.5, 1.5), (0.5, 1.0, 1.0), (1.0,), (0.5, 1.5)])
@pytest.mark.parametrize("with_aux", [True, False])
def test_deferred_direct_pass_gives_multi_scale_cam(flip, scales, with_aux):
    # the training step's split: every pass but cam_fn(images) now, those maps given to finish()
    from mcc.cam.multi_scale import _deferred_multi_scale_cam

    weight = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    calls = []

    def cam_fn(x):
        calls.append(tuple(x.shape))
        maps = torch.einsum("kc,bchw->bkhw", weight, F.avg_pool2d(x, 8))
        return (maps, maps.flip(1) * 2) if with_aux else maps

    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    expected = multi_scale_cam(cam_fn, images, scales, flip)
    deferred = any(s == 1.0 for s in scales)
    calls.clear()
    finish = _deferred_multi_scale_cam(cam_fn, images, scales, flip, defer_direct=True)
    # at full size only the flipped half ran (B images, once however often 1.0 is listed)
    assert [c for c in calls if c[-2:] == (32, 48)] == ([(2, 3, 32, 48)] if flip and deferred else [])
    result = finish(cam_fn(images) if deferred else None) if deferred else None
    if not deferred:
        with pytest.raises(ValueError, match="finish takes"):
            finish(cam_fn(images))
        result = finish(None)
    for got, want in zip(result, expected):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0)

    # only some channels: those equal, the others zero
    classes = torch.tensor([1, 4])
    finish = _deferred_multi_scale_cam(cam_fn, images, scales, flip, defer_direct=deferred, classes=classes)
    result = finish(cam_fn(images) if deferred else None)
    for got, want in zip(result, expected):
        if want is not None:
            torch.testing.assert_close(got[:, classes], want[:, classes], rtol=0, atol=0)
            assert not got[:, [0, 2, 3, 5]].any()
