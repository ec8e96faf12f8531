import pytest
import torch

from mcc.cam import cam_to_label

cuda = pytest.mark.cuda


def hand_case():
    """One image, 3 classes, a 1x5 map; class 2 (index 1) is absent and has the strongest values."""
    cam = torch.tensor(
        [
            [0.10, 0.25, 0.50, 0.70, 0.90],  # class 1
            [0.99, 0.99, 0.99, 0.99, 0.99],  # class 2, absent
            [0.20, 0.10, 0.60, 0.80, 0.30],  # class 3
        ]
    ).view(1, 3, 1, 5)
    cls_label = torch.tensor([[1.0, 0.0, 1.0]])
    return cam, cls_label


def test_two_way_by_hand():
    cam, cls_label = hand_case()
    # best present score: 0.20 (3), 0.25 (1), 0.60 (3), 0.80 (3), 0.90 (1)
    label = cam_to_label(cam, cls_label, bkg_thre=0.25)
    assert label.dtype == torch.long
    assert label.tolist() == [[[0, 0, 3, 3, 1]]]  # score == threshold is background


def test_three_way_by_hand():
    cam, cls_label = hand_case()
    label = cam_to_label(cam, cls_label, low_thre=0.25, high_thre=0.6)
    assert label.tolist() == [[[0, 0, 255, 3, 1]]]  # 0.60 <= high_thre is uncertain
    label = cam_to_label(cam, cls_label, low_thre=0.2, high_thre=0.7, ignore_index=-1)
    assert label.tolist() == [[[0, -1, -1, 3, 1]]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_boolean_and_low_precision_labels(dtype):
    cam, cls_label = hand_case()
    label = cam_to_label(cam.to(dtype), cls_label.bool(), bkg_thre=0.25)
    assert label.tolist() == [[[0, 0, 3, 3, 1]]]


def test_no_present_class_is_background():
    cam = torch.rand(2, 4, 3, 3)
    label = cam_to_label(cam, torch.zeros(2, 4), low_thre=0.25, high_thre=0.7)
    assert torch.equal(label, torch.zeros(2, 3, 3, dtype=torch.long))


def test_img_box_in_label_units():
    cam = torch.ones(2, 1, 4, 6)
    img_box = torch.tensor([[0, 4, 0, 6], [1, 3, 2, 5]])
    label = cam_to_label(cam, torch.ones(2, 1), bkg_thre=0.5, img_box=img_box)
    assert (label[0] == 1).all()
    expected = torch.full((4, 6), 255)
    expected[1:3, 2:5] = 1
    assert torch.equal(label[1], expected)
    with pytest.raises(ValueError, match="img_box row 0"):  # empty boxes are refused (a swapped order?)
        cam_to_label(cam, torch.ones(2, 1), bkg_thre=0.5, img_box=[[0, 0, 0, 6], [2, 2, 0, 0]])


def test_matches_a_loop_over_images():
    cam = torch.rand(3, 5, 7, 9)
    cls_label = (torch.rand(3, 5) > 0.5).float()
    img_box = torch.tensor([[0, 7, 0, 9], [1, 6, 2, 8], [3, 4, 0, 9]])
    label = cam_to_label(cam, cls_label, low_thre=0.3, high_thre=0.6, img_box=img_box)
    for i in range(3):
        score, cls = (cam[i] * cls_label[i, :, None, None]).max(0)
        one = torch.where(score > 0.6, cls + 1, torch.where(score > 0.3, 255, 0))
        y0, y1, x0, x1 = img_box[i].tolist()
        expected = torch.full_like(one, 255)
        expected[y0:y1, x0:x1] = one[y0:y1, x0:x1]
        assert torch.equal(label[i], expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "bkg_thre"),
        ({"bkg_thre": 0.5, "low_thre": 0.2, "high_thre": 0.7}, "bkg_thre"),
        ({"low_thre": 0.2}, "high_thre"),
        ({"high_thre": 0.7}, "low_thre"),
        ({"bkg_thre": 0.5, "high_thre": 0.7}, "bkg_thre"),
        ({"low_thre": 0.8, "high_thre": 0.7}, "low_thre"),
    ],
)
def test_inconsistent_thresholds_raise(kwargs, match):
    cam, cls_label = hand_case()
    with pytest.raises(ValueError, match=match):
        cam_to_label(cam, cls_label, **kwargs)


@pytest.mark.parametrize(
    "cam_shape, cls_shape, img_box, match",
    [
        ((3, 4, 4), (1, 3), None, "cam"),
        ((1, 3, 4, 4), (1, 2), None, "cls_label"),
        ((1, 3, 4, 4), (2, 3), None, "cls_label"),
        ((1, 3, 4, 4), (1, 3), [[0, 4, 0]], "img_box"),
        ((1, 3, 4, 4), (1, 3), [[0, 4, 0, 4], [0, 4, 0, 4]], "img_box"),
        ((1, 3, 4, 4), (1, 3), [[0, 5, 0, 4]], "img_box"),
        ((1, 3, 4, 4), (1, 3), [[-1, 4, 0, 4]], "img_box"),
        ((1, 3, 4, 4), (1, 3), [[0, 4, 3, 2]], "img_box"),
        ((1, 3, 4, 6), (1, 3), [[0, 6, 0, 4]], "img_box"),  # (y, x) order: a 6-high box on a 4-high label
        ((1, 3, 4, 4), (1, 3), [[0.0, 4.0, 0.0, 4.0]], "img_box"),
    ],
)
def test_bad_shapes_and_boxes_raise(cam_shape, cls_shape, img_box, match):
    with pytest.raises(ValueError, match=match):
        cam_to_label(torch.rand(cam_shape), torch.ones(cls_shape), bkg_thre=0.5, img_box=img_box)


@cuda
def test_cuda():
    cam, cls_label = hand_case()
    box = torch.tensor([[0, 1, 0, 4]], device="cuda")
    label = cam_to_label(cam.cuda(), cls_label.cuda(), bkg_thre=0.25, img_box=box)
    assert label.device.type == "cuda"
    assert label.tolist() == [[[0, 0, 3, 3, 255]]]


def test_bfloat16_cam_is_compared_at_full_precision():
    # 0.30078125 is 0.3 rounded to bf16: above the threshold 0.3, so it must stay foreground.
    cam = torch.full((1, 1, 1, 1), 0.30078125, dtype=torch.bfloat16)
    label = cam_to_label(cam, torch.ones(1, 1), bkg_thre=0.3)
    assert label.item() == 1
