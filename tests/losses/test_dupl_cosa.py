"""DuPL's consistency and discrepancy losses and CoSA's seg-to-CAM loss against values derived by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mcc.losses import consistency_loss, discrepancy_loss, seg_to_cam_loss

cuda = pytest.mark.cuda


# -- consistency ----


def test_consistency_by_hand():
    # one image, 2 classes, 3 pixels; clean logits give targets (0, 1, 1) with confidences
    # sigmoid(4) = 0.982, sigmoid(1) = 0.731, sigmoid(3) = 0.953
    clean = torch.tensor([[[[4.0, 0.0, -1.0]], [[0.0, 1.0, 2.0]]]])
    strong = torch.tensor([[[[1.0, 2.0, 0.0]], [[0.0, 0.0, 3.0]]]], requires_grad=True)
    label = torch.tensor([[[255, 255, 255]]])
    # mask: ignored and conf > 0.9 -> pixels 0 and 2; CE(strong, 0) at pixel 0, CE(strong, 1) at pixel 2
    ce0 = -math.log(math.exp(1) / (math.exp(1) + 1))
    ce2 = -math.log(math.exp(3) / (1 + math.exp(3)))
    loss = consistency_loss(strong, clean, label)
    assert float(loss) == pytest.approx((ce0 + ce2) / 2, rel=1e-6)
    loss.backward()
    assert strong.grad[..., 1].abs().sum() == 0  # pixel 1 is not confident enough
    # a labelled pixel is never in the mask
    label[0, 0, 0] = 1
    assert float(consistency_loss(strong, clean, label)) == pytest.approx(ce2, rel=1e-6)
    assert float(consistency_loss(strong, clean, label, conf_thre=0.5)) == pytest.approx(
        (ce2 + -math.log(1 / (1 + math.exp(2)))) / 2, rel=1e-6
    )


def test_consistency_over_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    strong = torch.randn(3, 4, 5, 6, generator=g)
    clean = 5 * torch.randn(3, 4, 5, 6, generator=g)
    label = torch.randint(0, 4, (3, 5, 6), generator=g)
    label[torch.rand(3, 5, 6, generator=g) < 0.5] = 255
    conf, target = clean.softmax(1).max(1)
    mask = (label == 255) & (conf > 0.9)
    expected = F.cross_entropy(strong, target.masked_fill(~mask, -100), reduction="sum") / mask.sum()
    assert float(consistency_loss(strong, clean, label)) == pytest.approx(float(expected), rel=1e-6)


def test_consistency_only_the_strong_view_learns_and_an_empty_mask_is_zero():
    strong = torch.randn(1, 3, 4, 4, requires_grad=True)
    clean = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = consistency_loss(strong, 20 * clean, torch.full((1, 4, 4), 255))
    loss.backward()
    assert clean.grad is None or clean.grad.abs().sum() == 0
    empty = consistency_loss(strong, clean, torch.zeros(1, 4, 4, dtype=torch.long))
    assert float(empty) == 0 and torch.isfinite(empty)
    strong.grad = None
    empty.backward()
    assert strong.grad.abs().sum() == 0


@pytest.mark.parametrize(
    ("strong", "clean", "label", "match"),
    [
        ((1, 3, 4, 4), (1, 3, 4, 5), (1, 4, 4), "strong_logits"),
        ((1, 3, 4, 4), (1, 3, 4, 4), (1, 4, 5), "label"),
        ((1, 3, 4), (1, 3, 4), (1, 4), "strong_logits"),
    ],
)
def test_consistency_checks(strong, clean, label, match):
    with pytest.raises(ValueError, match=match):
        consistency_loss(torch.zeros(strong), torch.zeros(clean), torch.zeros(label, dtype=torch.long))


# -- discrepancy ----


def test_discrepancy_value_and_half_gradient():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    # the cosine over the 20 positions of each image and channel, by hand
    fa, fb = a.flatten(2), b.flatten(2)
    cosine = (fa * fb).sum(-1) / (fa.norm(dim=-1) * fb.norm(dim=-1))
    written = 2 + 2 * cosine.mean()
    loss = discrepancy_loss(a, b)
    assert float(loss) == pytest.approx(float(written), rel=1e-12)
    loss.backward()
    grad_a, grad_b = torch.autograd.grad(written, (a, b))
    torch.testing.assert_close(a.grad, grad_a / 2)
    torch.testing.assert_close(b.grad, grad_b / 2)


def test_discrepancy_range_and_checks():
    a = torch.randn(1, 2, 3, 3)
    assert float(discrepancy_loss(a, a)) == pytest.approx(4.0)
    assert float(discrepancy_loss(a, -a)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="features_a"):
        discrepancy_loss(a, torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="features_b"):
        discrepancy_loss(a, torch.randn(1, 2, 9))


# -- seg to CAM ----


def test_seg_to_cam_by_hand():
    # 1 image, 2 classes, 1 pixel (teacher at the CAM's size): class 2 absent, so only bg and class 1
    cam = torch.tensor([[[[0.5]], [[-1.0]]]], requires_grad=True)
    teacher = torch.tensor([[[[0.02]], [[0.03]], [[5.0]]]])
    cls_label = torch.tensor([[1.0, 0.0]])
    # P over (bg, c1) = softmax((0.02, 0.03) / 0.01) = softmax(2, 3); class 2 has probability 0
    p1 = math.exp(3) / (math.exp(2) + math.exp(3))
    x1, x2 = 0.5, 0.0  # ReLU of the CAM
    log_sig = lambda v: -math.log(1 + math.exp(-v))  # noqa: E731
    expected = -((p1 * log_sig(x1) + (1 - p1) * log_sig(-x1)) + (0 * log_sig(x2) + 1 * log_sig(-x2))) / 2
    loss = seg_to_cam_loss(cam, teacher, cls_label)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert float(cam.grad[0, 1]) == 0  # ReLU: a negative CAM gets no gradient


def test_seg_to_cam_is_torchs_soft_margin_on_the_resized_target():
    g = torch.Generator().manual_seed(2)
    cam = torch.randn(2, 4, 3, 5, generator=g)
    teacher = torch.randn(2, 5, 12, 20, generator=g)
    cls_label = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])
    masked = teacher.clone()
    masked[:, 1:][~cls_label.bool()] = -1e5
    target = F.interpolate(
        (masked / 0.1).softmax(1)[:, 1:], size=(3, 5), mode="bilinear", align_corners=False
    )
    expected = F.multilabel_soft_margin_loss(
        cam.relu().permute(0, 2, 3, 1).reshape(-1, 4), target.permute(0, 2, 3, 1).reshape(-1, 4)
    )
    loss = seg_to_cam_loss(cam, teacher, cls_label, temperature=0.1)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert target[1].abs().max() < 1e-30  # an image without a class has Y = 0


@pytest.mark.parametrize(
    ("cam", "teacher", "cls_label", "kwargs", "match"),
    [
        ((2, 4, 3, 3), (2, 4, 6, 6), (2, 4), {}, "teacher_seg_logits"),
        ((2, 4, 3, 3), (2, 5, 6, 6), (2, 3), {}, "cls_label"),
        ((2, 4, 3, 3), (2, 5, 6, 6), (2, 4), {"temperature": 0}, "temperature"),
        ((2, 4, 3), (2, 5, 6, 6), (2, 4), {}, "cam"),
    ],
)
def test_seg_to_cam_checks(cam, teacher, cls_label, kwargs, match):
    with pytest.raises(ValueError, match=match):
        seg_to_cam_loss(torch.zeros(cam), torch.zeros(teacher), torch.ones(cls_label), **kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_low_precision_inputs_the_losses_are_float32(dtype):
    cam = torch.randn(1, 2, 3, 3).to(dtype)
    assert seg_to_cam_loss(cam, torch.randn(1, 3, 6, 6).to(dtype), torch.ones(1, 2)).dtype == torch.float32
    logits = torch.randn(1, 3, 4, 4).to(dtype)
    assert consistency_loss(logits, logits, torch.full((1, 4, 4), 255)).dtype == torch.float32


@cuda
def test_cuda():
    cam = torch.randn(2, 4, 3, 3, device="cuda", requires_grad=True)
    teacher = torch.randn(2, 5, 6, 6, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = seg_to_cam_loss(cam, teacher, torch.ones(2, 4, device="cuda"))
        loss = loss + consistency_loss(teacher, teacher, torch.full((2, 6, 6), 255, device="cuda"))
        loss = loss + discrepancy_loss(cam, cam.detach() + 1)
    loss.backward()
    assert cam.grad is not None and torch.isfinite(cam.grad).all()
