"""``img_box`` is validated wherever it is taken: rows (y0, y1, x0, x1), inside the image, non-empty."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import mcc.cam.labels as labels_module
from mcc.cam import cam_to_label
from mcc.network import MCCConfig, MCCNet
from mcc.refine import PAR, refine_cams_with_background

SIZE = 64
SMALL = dict(
    projector_dim=32,
    projector_hidden_dim=64,
    projector_bottleneck_dim=16,
    decoder_dim=32,
    num_views=2,
    mask_ratio=0.5,
    mask_scale=2,
)

# (x0, y0, x1, y1) boxes a user may pass by mistake, for a 64 x 48 (H x W) image:
# the whole image (reads as y0 = y1 = 0: empty) and a right part (reads as x0 = 64 > W).
HEIGHT, WIDTH = 64, 48
XYXY = {
    "whole-image": [0, 0, WIDTH, HEIGHT],
    "out-of-range": [10, 0, 48, 64],
}
BAD = {
    **XYXY,
    "empty-rows": [5, 5, 0, WIDTH],
    "empty-cols": [0, HEIGHT, 7, 7],
    "negative": [-1, 10, 0, 10],
    "beyond-height": [0, HEIGHT + 1, 0, WIDTH],
}


def small_net() -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    return MCCNet(vit, 3, MCCConfig.released(**SMALL))


def two_boxes(bad_row):
    return torch.tensor([[0, HEIGHT, 0, WIDTH], bad_row])


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_cam_to_label_rejects_bad_boxes(bad):
    cam = torch.rand(2, 3, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match=r"img_box row 1 .*\(y0, y1, x0, x1\)"):
        cam_to_label(cam, torch.ones(2, 3), bkg_thre=0.5, img_box=two_boxes(bad))


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_refine_rejects_bad_boxes(bad):
    images, cams = torch.rand(2, 3, HEIGHT, WIDTH), torch.rand(2, 3, 4, 3)
    with pytest.raises(ValueError, match=r"img_box row 1 .*\(y0, y1, x0, x1\)"):
        refine_cams_with_background(PAR(num_iter=1), images, cams, torch.ones(2, 3), img_box=two_boxes(bad))


@pytest.mark.parametrize("bad", XYXY.values(), ids=XYXY.keys())
def test_training_step_rejects_xyxy_boxes(bad):
    net = small_net()
    x = torch.randn(2, 3, HEIGHT, WIDTH)
    cls_label = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    with pytest.raises(ValueError, match=r"img_box row 1 .*\(y0, y1, x0, x1\)"):
        net.training_losses(x, x, x, cls_label, two_boxes(bad), 0)
    with pytest.raises(ValueError, match=r"img_box row 1 .*\(y0, y1, x0, x1\)"):
        net.make_labels(x, cls_label, two_boxes(bad), 0)


def test_bad_dtype_and_shape():
    cam = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="img_box must hold integers"):
        cam_to_label(cam, torch.ones(2, 3), bkg_thre=0.5, img_box=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"img_box must have shape \(2, 4\)"):
        cam_to_label(cam, torch.ones(2, 3), bkg_thre=0.5, img_box=torch.zeros(2, 5, dtype=torch.long))
    net = small_net()
    x = torch.randn(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="img_box must hold integers"):
        net.training_losses(x, x, x, torch.ones(2, 3), torch.zeros(2, 4), 0)


def test_box_smaller_than_a_token_is_accepted_by_the_step():
    # A valid pixel box that holds no whole token: the token labels are all ignored, nothing fails.
    net = small_net()
    x = torch.randn(2, 3, SIZE, SIZE)
    img_box = torch.tensor([[0, SIZE, 0, SIZE], [4, 12, 0, SIZE]])
    made = net.make_labels(x, torch.ones(2, 3), img_box, 0, generator=torch.Generator().manual_seed(0))
    assert (made.token_label[1] == 255).all()
    assert (made.pseudo_label[1, 4:12] != 255).any() and (made.pseudo_label[1, 12:] == 255).all()
    losses = net.training_losses(x, x, x, torch.ones(2, 3), img_box, 3000, labels=made)
    assert all(torch.isfinite(t) for t in losses)


def test_the_training_step_checks_the_box_once(monkeypatch):
    # One fused check (one host sync on an accelerator) per step, not one per consumer.
    calls = []
    original = labels_module.check_img_box

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(labels_module, "check_img_box", counting)
    net = small_net()
    x = torch.randn(2, 3, SIZE, SIZE)
    img_box = torch.tensor([[0, SIZE, 0, SIZE], [8, SIZE - 8, 0, 40]])
    # Step 0: the labels, the affinity and segmentation targets (the regularised loss, which validates
    # its own box, is off before seg_start_step).
    net.training_losses(x, x, x, torch.ones(2, 3), img_box, 0, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1


def test_valid_boxes_are_unchanged():
    # The checked path gives what the documented box means.
    cam = torch.ones(2, 1, 4, 6)
    img_box = torch.tensor([[0, 4, 0, 6], [1, 3, 2, 5]])
    label = cam_to_label(cam, torch.ones(2, 1), bkg_thre=0.5, img_box=img_box)
    expected = torch.full((4, 6), 255)
    expected[1:3, 2:5] = 1
    assert (label[0] == 1).all() and torch.equal(label[1], expected)


def test_docstrings_name_the_order():
    from mcc.network import MCCNet as Net

    for fn in (cam_to_label, refine_cams_with_background, Net.make_labels, Net.training_losses):
        assert "(y0, y1, x0, x1)" in fn.__doc__ and "non-empty" in fn.__doc__, fn.__name__
