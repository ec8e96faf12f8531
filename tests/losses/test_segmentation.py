import math

import pytest
import torch
import torch.nn.functional as F

from mcc.losses import segmentation_loss


def _loss_loop(logits, label, ignore_index=255):
    logits = logits.double()
    b, _, h, w = logits.shape
    bg, fg = [], []
    for k in range(b):
        for y in range(h):
            for x in range(w):
                t = int(label[k, y, x])
                if t == ignore_index:
                    continue
                ce = float(-torch.log_softmax(logits[k, :, y, x], 0)[t])
                (bg if t == 0 else fg).append(ce)
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return 0.5 * (mean(bg) + mean(fg))


def test_hand_computed():
    # two classes, two pixels: background with uniform logits, foreground with logits (0, log 3)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])
    label = torch.tensor([[[0, 1]]])
    assert segmentation_loss(logits, label).item() == pytest.approx(0.5 * (math.log(2) + math.log(4 / 3)))


@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (1, 21, 4, 4)])
def test_matches_loop(shape):
    b, c, h, w = shape
    logits = torch.randn(shape)
    label = torch.randint(0, c, (b, h, w))
    label[torch.rand(b, h, w) < 0.5] = 0
    label[torch.rand(b, h, w) < 0.2] = 255
    out = segmentation_loss(logits, label)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(_loss_loop(logits, label), abs=1e-6)


def test_equals_two_cross_entropies_when_both_halves_present():
    logits = torch.randn(2, 5, 6, 6)
    label = torch.randint(0, 5, (2, 6, 6))
    bg = label.masked_fill(label != 0, 255)
    fg = label.masked_fill(label == 0, 255)
    ref = 0.5 * (
        F.cross_entropy(logits, bg, ignore_index=255) + F.cross_entropy(logits, fg, ignore_index=255)
    )
    assert segmentation_loss(logits, label).item() == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.parametrize("fill", [0, 3, 255])
def test_missing_half_contributes_zero_and_backward_works(fill):
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    label = torch.full((2, 3, 3), fill)
    out = segmentation_loss(logits, label)
    assert torch.isfinite(out)
    if fill == 255:
        assert out.item() == 0.0
    else:
        assert out.item() == pytest.approx(_loss_loop(logits.detach(), label), abs=1e-6)
    out.backward()
    assert torch.isfinite(logits.grad).all()
    if fill == 255:
        assert (logits.grad == 0).all()


def test_custom_ignore_index():
    logits = torch.randn(1, 3, 2, 2)
    label = torch.tensor([[[0, 1], [-1, 2]]])
    assert segmentation_loss(logits, label, ignore_index=-1).item() == pytest.approx(
        _loss_loop(logits, label, ignore_index=-1), abs=1e-6
    )


def test_gradcheck():
    logits = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    label = torch.tensor([[[0, 1], [2, 255]], [[0, 0], [255, 1]]])
    assert torch.autograd.gradcheck(lambda x: segmentation_loss(x, label), (logits,))


def test_bf16_autocast_close_to_float32():
    logits = torch.randn(2, 5, 8, 8)
    label = torch.randint(0, 5, (2, 8, 8))
    ref = segmentation_loss(logits, label)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = segmentation_loss(logits.bfloat16(), label)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)


def test_bad_input():
    logits = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="label"):
        segmentation_loss(logits, torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="label"):
        segmentation_loss(logits, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="logits"):
        segmentation_loss(logits[0], torch.zeros(4, 3, dtype=torch.long))


def test_label_out_of_range_is_a_value_error():
    logits = torch.randn(1, 4, 3, 3)
    label = torch.zeros(1, 3, 3, dtype=torch.long)
    label[0, 0, 0] = 7
    with pytest.raises(ValueError, match="label"):
        segmentation_loss(logits, label)
    label[0, 0, 0] = -1
    with pytest.raises(ValueError, match="label"):
        segmentation_loss(logits, label)
    label[0, 0, 0] = 255
    assert torch.isfinite(segmentation_loss(logits, label))
