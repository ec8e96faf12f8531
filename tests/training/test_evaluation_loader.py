"""Evaluation reads images with DataLoader workers, runs a DenseCRF through its batched inference and
fills the confusion matrices with one scatter each; none of this changes a score."""

from __future__ import annotations

import pytest
import torch
from training_helpers import datasets, tiny_net, write_root

from mcc.refine import DenseCRF
from mcc.training import ConfusionMatrix, evaluate


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=2, num_val=3)


def scores(result):
    return {name: (s.miou, s.pixel_accuracy) for name, s in result.items()}


@pytest.mark.slow
def test_workers_and_the_crf_inference_give_the_same_scores(root):
    net = tiny_net()
    _, val_set = datasets(root)
    crf = DenseCRF(2, 1, 1, 30, 5, 4, backend="torch")
    kwargs = dict(pseudo_labels=True, crf=crf)
    plain = evaluate(net, val_set, **kwargs)
    assert scores(evaluate(net, val_set, num_workers=2, **kwargs)) == scores(plain)
    # the DenseCRF through its numpy call, image by image, as before: the same segmentation
    as_numpy = evaluate(net, val_set, cams=False, crf=lambda image, probs: crf(image, probs))
    assert scores(as_numpy)["seg"] == scores(plain)["seg"]


def test_the_confusion_matrix_counts_as_before():
    torch.manual_seed(0)
    target = torch.randint(0, 4, (3, 17, 19))
    target[:, :3] = 255
    prediction = torch.randint(0, 4, (3, 17, 19))
    matrix = ConfusionMatrix(4)
    matrix.update(prediction, target)
    valid = target != 255
    expected = torch.bincount(target[valid] * 4 + prediction[valid], minlength=16).view(4, 4)
    assert torch.equal(matrix.matrix, expected)
    matrix.update(prediction, target)
    assert torch.equal(matrix.matrix, 2 * expected)
