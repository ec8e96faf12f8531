"""The pretrained stand-in: synthetic shapes set, average precision, pretraining, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcc.data.synthetic_shapes import SHAPE_CLASSES, SyntheticShapes, render_shapes_sample
from mcc.data.synthetic_voc import _SPLIT_CODES
from mcc.training.pretrain import (
    PretrainSettings,
    ViTArch,
    average_precision,
    load_standin,
    pretrain_vit,
    save_standin,
)


def test_shapes_are_deterministic_multilabel_and_not_voc_classes():
    first = SyntheticShapes(6, size=32, seed=3)
    again = SyntheticShapes(6, size=32, seed=3)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.images.shape == (6, 3, 32, 32) and first.labels.shape == (6, len(SHAPE_CLASSES))
    assert (first.labels.sum(1) >= 1).all()
    shifted = SyntheticShapes(2, size=32, seed=3, offset=4)
    assert torch.equal(shifted.images, first.images[4:])
    voc_pairs = {
        ("disc", "radial"),
        ("box", "stripes"),
        ("tri", "checker"),
        ("ring", "speckle"),
        ("cross", "dots"),
    }
    assert not voc_pairs & set(SHAPE_CLASSES)
    assert 7 not in _SPLIT_CODES.values()  # its own random streams
    image, label = render_shapes_sample(np.random.default_rng(0), 48)
    assert image.dtype == np.uint8 and image.shape == (48, 48, 3) and label.sum() >= 1
    with pytest.raises(ValueError, match="num_images"):
        SyntheticShapes(0)
    with pytest.raises(ValueError, match="size"):
        render_shapes_sample(np.random.default_rng(0), 8)


def test_average_precision_matches_a_plain_loop():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(30, 4, generator=generator)
    labels = (torch.rand(30, 4, generator=generator) < 0.4).float()
    labels[:, 3] = 0
    ap = average_precision(scores, labels)
    for k in range(3):
        order = scores[:, k].argsort(descending=True)
        hits, total = 0, 0.0
        for rank, index in enumerate(order.tolist(), start=1):
            if labels[index, k]:
                hits += 1
                total += hits / rank
        assert ap[k].item() == pytest.approx(total / labels[:, k].sum().item())
    assert torch.isnan(ap[3])
    assert average_precision(labels[:, :3], labels[:, :3]).eq(1).all()  # perfect scores


def test_pretrain_learns_and_round_trips(tmp_path):
    torch.manual_seed(0)
    arch = ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    data = SyntheticShapes(16, size=32, flip=True)
    vit = arch.build(num_classes=data.num_classes)
    result = pretrain_vit(
        vit, data, PretrainSettings(steps=12, batch_size=8, warmup_steps=2), val_set=data, log=lambda m: None
    )
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert 0 <= result["val"]["mAP"] <= 1
    path = save_standin(tmp_path / "s.pt", vit, arch, {"val": result["val"]})
    loaded, meta = load_standin(path)
    assert meta["val"] == result["val"] and not hasattr(loaded.head, "weight")
    images = data.images[:2]
    vit.eval(), loaded.eval()
    assert torch.allclose(loaded.forward_features(images), vit.forward_features(images))
    with pytest.raises(ValueError, match="linear head"):
        pretrain_vit(arch.build(num_classes=3), data, PretrainSettings(steps=1), log=lambda m: None)
    torch.save({"not": "a stand-in"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="stand-in"):
        load_standin(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="patch_size"):
        ViTArch(img_size=30, patch_size=8)


@pytest.mark.timeout(60)
def test_a_batch_larger_than_the_training_set_is_refused_not_looped_forever():
    train_set = SyntheticShapes(4, 32, seed=0)
    vit = ViTArch(32, 8, 32, 1, 2).build(num_classes=train_set.num_classes)
    with pytest.raises(ValueError, match="batch_size 8 exceeds the 4 training images"):
        pretrain_vit(vit, train_set, PretrainSettings(steps=1, batch_size=8), log=lambda m: None)
