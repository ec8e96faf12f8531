"""Confusion-matrix mIoU (docs/method.md section 4) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mcc.training import ConfusionMatrix, segmentation_scores

TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
PREDICTION = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])


def test_confusion_and_iou_by_hand():
    cm = ConfusionMatrix(3)
    cm.update(PREDICTION, TARGET)
    # rows = ground truth, columns = prediction; the 255 pixel is not counted
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.matrix, expected)
    scores = cm.compute()
    # IoU = diag / (row + col - diag): 1/(2+3-1), 2/(3+3-2), 1/(2+1-1)
    assert scores.iou.tolist() == pytest.approx([0.25, 0.5, 0.5])
    assert scores.miou == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert scores.pixel_accuracy == pytest.approx(4 / 7)


def test_accumulates_over_batches():
    whole = ConfusionMatrix(3)
    whole.update(PREDICTION, TARGET)
    parts = ConfusionMatrix(3)
    parts.update(PREDICTION[:1], TARGET[:1])
    parts.update(PREDICTION[1:], TARGET[1:])
    assert torch.equal(whole.matrix, parts.matrix)
    parts.reset()
    assert parts.matrix.sum() == 0


def test_absent_class_is_left_out_of_the_mean():
    scores = segmentation_scores(torch.tensor([[2, 0, 0], [0, 3, 0], [0, 0, 0]]))
    assert math.isnan(scores.iou[2]) and scores.miou == 1.0


def test_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="same shape"):
        cm.update(PREDICTION, TARGET[:1])
    with pytest.raises(ValueError, match="prediction has values"):
        cm.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(ValueError, match="target has values"):
        cm.update(torch.tensor([0]), torch.tensor([7]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match=r"\(C, C\)"):
        segmentation_scores(torch.zeros(2, 3))
    cm.update(torch.tensor([7]), torch.tensor([255]))  # a prediction under ignore is never looked at
