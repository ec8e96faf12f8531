"""Datasets count background, MCCNet does not: the names say which, and a mix-up fails loudly."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mcc.data import VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.data.layout import DatasetRoot
from mcc.network import MCCConfig, MCCNet

SMALL = dict(
    projector_dim=16, projector_hidden_dim=32, projector_bottleneck_dim=8, decoder_dim=16, num_views=2
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=2, num_val=1, size=64, seed=0)


def test_datasets_expose_the_foreground_count(root):
    for dataset in (VOCSegmentation(root, "val"), VOCTrainViews(root, "train", crop_size=64)):
        assert dataset.num_foreground_classes == dataset.num_classes - 1 == len(dataset.class_names) - 1
        assert dataset[0]["cls_label"].shape == (dataset.num_foreground_classes,)
    data = DatasetRoot(root, "train")
    assert data.num_foreground_classes == data.num_classes - 1


def _net(num_classes: int) -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    return MCCNet(vit, num_classes, MCCConfig.released(**SMALL))


def test_a_dataset_count_given_to_the_network_is_named(root):
    train = VOCTrainViews(root, "train", crop_size=64, seed=0)
    sample = train[0]
    x, v1, v2 = (sample[k][None] for k in ("x", "v1", "v2"))
    cls_label, box = sample["cls_label"][None], sample["img_box"][None]
    net = _net(train.num_classes)  # the mistake: background counted
    with pytest.raises(ValueError, match="num_foreground_classes") as error:
        net.training_losses(x, v1, v2, cls_label, box, 0)
    assert "background" in str(error.value)
    with pytest.raises(ValueError, match="background"):
        net.make_labels(x, cls_label, box, 0)
    # the right count works
    losses = _net(train.num_foreground_classes).training_losses(x, v1, v2, cls_label, box, 0)
    assert torch.isfinite(losses.total)


def test_any_other_width_still_names_cls_label():
    net = _net(5)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"cls_label must have shape \(B, C\) = \(1, 5\)"):
        net.make_labels(x, torch.ones(1, 2), None, 0)
