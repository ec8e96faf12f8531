"""DuPL's dynamic threshold: cosine descent, per-image max, and per-image thresholds in the labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcc.cam import cam_to_label, cosine_threshold, image_threshold

cuda = pytest.mark.cuda


@pytest.mark.parametrize("step", [0, 1, 4500, 8999, 9000, 17998, 17999])
def test_cosine_threshold_by_hand(step):
    # start + (end - start) * (1 - cos(pi * step / (num_steps - 1))) / 2, here with num_steps = 18000
    expected = 0.7 + (0.55 - 0.7) * (1 - math.cos(math.pi * step / 17999)) / 2
    assert cosine_threshold(step, 0.7, 0.55, 18000) == pytest.approx(expected, abs=1e-15)


def test_cosine_threshold_ends():
    assert cosine_threshold(-5, 0.7, 0.55, 100) == 0.7
    assert cosine_threshold(0, 0.7, 0.55, 100) == 0.7
    assert cosine_threshold(99, 0.7, 0.55, 100) == pytest.approx(0.55, abs=1e-15)
    assert cosine_threshold(100, 0.7, 0.55, 100) == 0.55
    assert cosine_threshold(10**9, 0.7, 0.55, 100) == 0.55
    assert cosine_threshold(1, 0.7, 0.55, 2) == pytest.approx(0.55)
    assert isinstance(cosine_threshold(3, 0.7, 0.55, 10), float)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cosine_threshold_of_tensors_keeps_their_dtype(dtype):
    start = torch.full((4,), 0.7, dtype=dtype)
    end = torch.tensor([0.7, 0.55, 0.6, 0.3], dtype=dtype)
    value = cosine_threshold(250, start, end, 1000)
    assert value.dtype == dtype and value.shape == (4,)
    factor = (1 - math.cos(math.pi * 250 / 999)) / 2  # in float64; the interpolation in dtype
    expected = start + (end - start) * factor
    assert torch.equal(value, expected)
    if dtype == torch.float32:  # the same in numpy's float32 arithmetic
        s, e = start.numpy(), end.numpy()
        assert (value.numpy() == s + (e - s) * np.float32(factor)).all()
    assert value.data_ptr() != start.data_ptr()
    # a float and a tensor mix
    mixed = cosine_threshold(250, 0.7, end, 1000)
    assert mixed.dtype == dtype and torch.equal(mixed, expected)


@pytest.mark.parametrize("num_steps", [1, 0, -3, 2.5])
def test_cosine_threshold_needs_two_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        cosine_threshold(0, 0.7, 0.55, num_steps)


def test_cosine_threshold_tensors_of_one_shape():
    with pytest.raises(ValueError, match="start and end"):
        cosine_threshold(0, torch.zeros(3), torch.zeros(4), 10)


def test_image_threshold_is_the_max_over_present_classes():
    class_thre = torch.tensor([0.7, 0.55, 0.6, 0.58])
    cls_label = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float32)
    result = image_threshold(class_thre, cls_label)
    assert result.dtype == torch.float32
    assert result.tolist() == pytest.approx([0.58, 0.7, 0.7, 0.6])  # no class: class_thre.max()
    assert image_threshold(class_thre.double(), cls_label.bool()).dtype == torch.float64


@pytest.mark.parametrize(
    ("class_thre", "cls_label", "match"),
    [
        (torch.zeros(2, 2), torch.ones(1, 2), "class_thre"),
        (torch.zeros(0), torch.ones(1, 0), "class_thre"),
        (torch.zeros(3), torch.ones(1, 2), "cls_label"),
        (torch.zeros(3), torch.ones(3), "cls_label"),
    ],
)
def test_image_threshold_checks(class_thre, cls_label, match):
    with pytest.raises(ValueError, match=match):
        image_threshold(class_thre, cls_label)


def _case():
    torch.manual_seed(0)
    cam = torch.rand(3, 4, 9, 11)
    cls_label = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    return cam, cls_label


def test_per_image_high_thre_equals_one_call_per_image():
    cam, cls_label = _case()
    high = torch.tensor([0.5, 0.8, 0.3])
    label = cam_to_label(cam, cls_label, low_thre=0.25, high_thre=high)
    for b in range(3):
        one = cam_to_label(cam[b : b + 1], cls_label[b : b + 1], low_thre=0.25, high_thre=float(high[b]))
        assert torch.equal(label[b : b + 1], one)
    assert (label == 255).any() and (label == 0).any() and (label > 0).logical_and(label < 255).any()


def test_per_image_high_thre_is_compared_by_torch():
    # a score equal to the float32 threshold is ignored (<=), one just above is foreground
    threshold = torch.tensor([0.7], dtype=torch.float32)
    above = torch.nextafter(threshold, torch.tensor(1.0))
    cam = torch.stack([threshold, above]).view(1, 1, 1, 2)
    label = cam_to_label(cam, torch.ones(1, 1), low_thre=0.25, high_thre=threshold)
    assert label.tolist() == [[[255, 1]]]


def test_per_image_high_thre_with_a_box():
    cam, cls_label = _case()
    box = torch.tensor([[0, 9, 0, 11], [1, 5, 2, 8], [3, 4, 0, 2]])
    high = torch.tensor([0.6, 0.4, 0.9], dtype=torch.float64)
    label = cam_to_label(cam, cls_label, low_thre=0.25, high_thre=high, img_box=box)
    for b in range(3):
        one = cam_to_label(
            cam[b : b + 1],
            cls_label[b : b + 1],
            low_thre=0.25,
            high_thre=float(high[b]),
            img_box=box[b : b + 1],
        )
        assert torch.equal(label[b : b + 1], one)


@pytest.mark.parametrize(
    ("high_thre", "match"),
    [
        (torch.tensor([0.5, 0.2, 0.9]), r"high_thre\[1\]"),
        (torch.tensor([0.5, 0.7]), "high_thre"),
        (torch.tensor([[0.5, 0.7, 0.8]]), "high_thre"),
        (torch.tensor([1, 1, 1]), "high_thre"),
    ],
)
def test_per_image_high_thre_checks(high_thre, match):
    cam, cls_label = _case()
    with pytest.raises(ValueError, match=match):
        cam_to_label(cam, cls_label, low_thre=0.25, high_thre=high_thre)


def test_bkg_thre_with_a_tensor_high_thre_is_refused():
    cam, cls_label = _case()
    with pytest.raises(ValueError, match="bkg_thre"):
        cam_to_label(cam, cls_label, bkg_thre=0.5, low_thre=0.25, high_thre=torch.full((3,), 0.7))


def test_dupl_schedule_end_to_end():
    # DuPL VOC: 0.7 -> per-class targets over steps 2000-20000; an image takes its classes' max
    targets = torch.tensor([0.70, 0.55, 0.55])
    start = torch.full((3,), 0.7)
    cls_label = torch.tensor([[0, 1, 1], [1, 1, 0]])
    at_end = image_threshold(cosine_threshold(20000 - 2000, start, targets, 18000), cls_label)
    assert at_end.tolist() == pytest.approx([0.55, 0.70])
    halfway = image_threshold(cosine_threshold(8999 + 1, start, targets, 18000), cls_label)
    assert 0.55 < float(halfway[0]) < 0.7 and float(halfway[1]) == pytest.approx(0.7)


@cuda
def test_cuda():
    cam, cls_label = _case()
    high = image_threshold(
        cosine_threshold(100, torch.full((4,), 0.7), torch.full((4,), 0.5), 200).cuda(), cls_label.cuda()
    )
    label = cam_to_label(cam.cuda(), cls_label.cuda(), low_thre=0.25, high_thre=high)
    assert torch.equal(label.cpu(), cam_to_label(cam, cls_label, low_thre=0.25, high_thre=high.cpu()))
