"""Threshold, shape and type checks at the library's entry points, and the reasonable forms they accept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from mcc.attention import ScaledBernoulliKeyMask
from mcc.cam import multi_scale_cam
from mcc.data import normalize
from mcc.network import MCCConfig, MCCNet
from mcc.refine import PAR, refine_cams_with_background

SMALL = dict(projector_dim=16, projector_hidden_dim=32, projector_bottleneck_dim=8, decoder_dim=16)


@pytest.fixture(scope="module")
def net() -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    return MCCNet(vit, 3, MCCConfig.released(**SMALL)).eval()


def test_refine_rejects_low_above_high():
    images, cams = torch.rand(1, 3, 16, 16), torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"low_thre \(0.8\) must not exceed high_thre \(0.3\)"):
        refine_cams_with_background(
            PAR(num_iter=1), images, cams, torch.ones(1, 2), high_thre=0.3, low_thre=0.8
        )
    # equal levels are one background level (used for a complete label): allowed
    refine_cams_with_background(PAR(num_iter=1), images, cams, torch.ones(1, 2), high_thre=0.5, low_thre=0.5)


def _maps(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x, 4)


def test_multi_scale_cam_accepts_a_single_tensor():
    images = torch.rand(2, 3, 32, 24)
    cam, cam_aux = multi_scale_cam(_maps, images)
    assert cam_aux is None
    expected, _ = multi_scale_cam(lambda x: (_maps(x), None), images)
    torch.testing.assert_close(cam, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "returned",
    [[torch.zeros(4, 3, 8, 6)], (torch.zeros(4, 3, 8, 6),) * 3, "maps"],
    ids=["list", "3-tuple", "str"],
)
def test_multi_scale_cam_names_cam_fn_for_other_returns(returned):
    with pytest.raises(ValueError, match="cam_fn must return"):
        multi_scale_cam(lambda x: returned, torch.rand(2, 3, 32, 24), scales=(1.0,))


def test_key_mask_takes_an_int_grid():
    sampler = ScaledBernoulliKeyMask(0.5, 4)
    square = sampler(2, 28, 3, generator=torch.Generator().manual_seed(0))
    pair = sampler(2, (28, 28), 3, generator=torch.Generator().manual_seed(0))
    assert square.shape == (2, 3, 784) and torch.equal(square, pair)
    for bad in (0, (28,), (28, 28, 1), "28", 2.5):
        with pytest.raises(ValueError, match="grid"):
            sampler(2, bad)


def test_normalize_accepts_pil_tensors_and_arrays():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    expected = normalize(Image.fromarray(rgb))
    assert expected.shape == (3, 6, 5) and expected.dtype == torch.float32
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    torch.testing.assert_close(normalize(chw), expected)
    torch.testing.assert_close(normalize(chw.float() / 255), expected)
    torch.testing.assert_close(normalize(rgb), expected)
    torch.testing.assert_close(normalize(rgb.astype(np.float32) / 255), expected)
    batch = normalize(torch.stack([chw, chw]))
    assert batch.shape == (2, 3, 6, 5)
    torch.testing.assert_close(batch[1], expected)
    for bad in (torch.zeros(4, 6, 5), torch.zeros(6, 5), np.zeros((6, 5)), [1, 2, 3]):
        with pytest.raises(ValueError, match="image"):
            normalize(bad)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(3, 64, 64), "images must have shape"),
        (torch.rand(1, 1, 64, 64), "images must have shape"),
        (torch.randint(0, 255, (1, 3, 64, 64)), "floating"),
    ],
    ids=["3-D", "1-channel", "integer"],
)
@pytest.mark.parametrize("method", ["segment", "cams", "multi_scale_cams"])
def test_network_inputs_are_checked(net, method, images, match):
    with pytest.raises(ValueError, match=match):
        getattr(net, method)(images)


def test_cams_need_patch_multiples(net):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        net.cams(torch.rand(1, 3, 64, 56))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        net.multi_scale_cams(torch.rand(1, 3, 64, 56))
    with pytest.raises(ValueError, match="scales"):  # 0.5 x 96 = 48 is fine, 0.75 x 96 = 72 is not
        net.multi_scale_cams(torch.rand(1, 3, 96, 96), scales=(1.0, 0.75))
    assert net.segment(torch.rand(1, 3, 60, 50)).shape == (1, 4, 60, 50)  # segment resizes: any size
    assert net.cams(torch.rand(1, 3, 64, 48))[0].shape == (1, 3, 4, 3)
