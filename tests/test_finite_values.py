"""NaN and inf are refused where CAMs, images and labels are taken; absent classes never win a pixel."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mcc._checks import check_finite
from mcc.cam import cam_to_label
from mcc.cam.labels import _label_from_cam
from mcc.network import MCCConfig, MCCNet
from mcc.refine import PAR, refine_cams_with_background

SMALL = dict(projector_dim=16, projector_hidden_dim=32, projector_bottleneck_dim=8, decoder_dim=16)


@pytest.fixture(scope="module")
def net() -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    return MCCNet(vit, 3, MCCConfig.released(**SMALL))


def _poison(tensor: torch.Tensor, value: float) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[1] = value
    return tensor


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_cam_to_label_refuses_non_finite_cams_and_labels(value):
    cam, cls_label = torch.rand(2, 3, 4, 4), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"^cam holds .* \(the first at index \(0, 0, 0, 1\)\)"):
        cam_to_label(_poison(cam, value), cls_label, bkg_thre=0.5)
    with pytest.raises(ValueError, match=r"^cls_label holds"):
        cam_to_label(cam, _poison(cls_label, value), low_thre=0.25, high_thre=0.7)


def test_an_absent_class_never_wins():
    # the image's only class is 2 (index 1); class 1 is absent and has the higher CAM value
    cam = torch.tensor([[[[0.0, 0.2]], [[-0.5, 0.9]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    cls_label = torch.tensor([[0.0, 1.0, 0.0]])
    assert cam_to_label(cam, cls_label, bkg_thre=-1.0).tolist() == [[[2, 2]]]
    assert cam_to_label(cam, torch.zeros(1, 3), bkg_thre=-1.0).tolist() == [[[0, 0]]]  # no class present
    # the unchecked path (accelerators): a NaN pixel is ignored, never given an absent class
    nan_cam = torch.full((1, 3, 1, 2), float("nan"))
    label = _label_from_cam(nan_cam, cls_label, 0.5, None, None, None, 255)
    assert label.tolist() == [[[255, 255]]]


def test_refinement_refuses_non_finite_inputs():
    par = PAR(num_iter=2)
    images, cams, cls_label = torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4), torch.ones(1, 2)
    with pytest.raises(ValueError, match="^cams holds 1 NaN"):
        refine_cams_with_background(par, images, _poison(cams, float("nan")), cls_label)
    with pytest.raises(ValueError, match="^images holds 0 NaN and 1 infinite"):
        refine_cams_with_background(par, _poison(images, float("inf")), cams, cls_label)
    with pytest.raises(ValueError, match="^cls_label holds"):
        refine_cams_with_background(par, images, cams, _poison(cls_label, float("nan")))
    with pytest.raises(ValueError, match="^masks holds"):
        par(images, _poison(cams, float("nan")))


def test_mccnet_refuses_non_finite_images_and_labels(net):
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="^images holds 1 NaN"):
        net.cams(_poison(images, float("nan")))
    with pytest.raises(ValueError, match="^images holds"):
        net.segment(_poison(images, float("inf")))
    cls_label = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="^cls_label holds 1 NaN"):
        net.training_losses(images, images[..., :16, :16], images, _poison(cls_label, float("nan")), None, 0)
    with pytest.raises(ValueError, match="^v2 holds"):
        net.training_losses(images, images[..., :16, :16], _poison(images, float("nan")), cls_label, None, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_mccnet_names_an_image_dtype_that_is_not_its_own(net, dtype):
    with pytest.raises(ValueError, match=f"images are {dtype} but the network's weights are torch.float32"):
        net.cams(torch.rand(1, 3, 32, 32, dtype=dtype))
    if dtype != torch.float64:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts these: allowed
            net.cams(torch.rand(1, 3, 32, 32, dtype=dtype))


@pytest.mark.parametrize("step", [-5, -1, 1.5, "3", True])
def test_mccnet_refuses_a_step_that_is_not_a_count(net, step):
    images, cls_label = torch.rand(1, 3, 32, 32), torch.tensor([[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        net.training_losses(images, images[..., :16, :16], images, cls_label, None, step)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        net.make_labels(images, cls_label, None, step)


def test_device_tensors_are_not_checked_unless_asked(monkeypatch):
    meta = torch.empty(4, device="meta")  # stands for an accelerator tensor: checking it would sync
    check_finite(meta, "x")
    monkeypatch.setenv("MCC_CHECK_FINITE", "1")
    with pytest.raises((NotImplementedError, RuntimeError)):  # asked: it does look (meta has no data)
        check_finite(meta, "x")
    check_finite(torch.arange(3), "x")  # integers are always finite
