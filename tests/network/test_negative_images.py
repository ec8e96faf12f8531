"""Images with no foreground class: every function that takes image labels handles them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from mcc.cam import cam_to_label
from mcc.data import VOCSegmentation, VOCTrainViews, make_synthetic_voc
from mcc.losses import positive_views
from mcc.network import MCCConfig, MCCNet
from mcc.refine import PAR, refine_cams_with_background
from mcc.training import evaluate

NUM_CLASSES = 5
SIZE = 64
SMALL = dict(
    projector_dim=32,
    projector_hidden_dim=64,
    projector_bottleneck_dim=16,
    decoder_dim=32,
    num_views=4,
    mask_ratio=0.5,
    mask_scale=2,
)


def small_net(seed: int = 0) -> MCCNet:
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    return MCCNet(vit, NUM_CLASSES, MCCConfig.released(**SMALL))


def inputs(cls_label: torch.Tensor, with_box: bool):
    g = torch.Generator().manual_seed(7)
    b = cls_label.shape[0]
    x = torch.randn(b, 3, SIZE, SIZE, generator=g)
    v1 = torch.randn(b, 3, SIZE, SIZE, generator=g)
    v2 = x + 0.2 * torch.randn(x.shape, generator=g)
    box = torch.tensor([[0, SIZE, 0, SIZE], [8, SIZE - 8, 0, SIZE - 20], [0, SIZE, 16, SIZE]])[:b]
    return x, v1, v2, cls_label, box if with_box else None


NEGATIVE_1 = torch.zeros(1, NUM_CLASSES)
MIXED_3 = torch.tensor([[0, 0, 0, 0, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)


@pytest.mark.parametrize(
    "cls_label", [NEGATIVE_1, MIXED_3, torch.zeros(3, NUM_CLASSES)], ids=["neg1", "mixed3", "neg3"]
)
@pytest.mark.parametrize("step", [0, 13000], ids=["early", "late"])
@pytest.mark.parametrize("with_box", [False, True], ids=["nobox", "box"])
def test_training_step_fast_equals_plain_and_is_finite(cls_label, step, with_box):
    fast_net = small_net()
    plain_net = copy.deepcopy(fast_net)
    batch = inputs(cls_label, with_box)
    key_mask = fast_net.mask_sampler(len(cls_label), (4, 4), 4, generator=torch.Generator().manual_seed(1))
    fast = fast_net.training_losses(*batch, step, key_mask=key_mask)
    plain = plain_net.training_losses(*batch, step, key_mask=key_mask, fast=False)
    for name, a, b in zip(fast._fields, fast, plain, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6, msg=name)
    fast.total.backward()
    plain.total.backward()
    for (name, p), (_, q) in zip(fast_net.named_parameters(), plain_net.named_parameters(), strict=True):
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
            # relative to the largest entry, as in test_mcc_net (float32 rounding of the two orders)
            assert float((p.grad - q.grad).abs().max()) <= 1e-4 * float(q.grad.abs().max()) + 1e-7, name


def test_negative_images_are_background_in_every_label():
    net = small_net()
    x, _, _, cls_label, box = inputs(MIXED_3, with_box=True)
    labels = net.make_labels(x, cls_label, box, 13000, generator=torch.Generator().manual_seed(0))
    inside = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(box.tolist()):
        inside[i, y0:y1, x0:x1] = True
    for i in (0, 2):  # the negative images
        assert (labels.pseudo_label[i][inside[i]] == 0).all()
        assert (labels.pseudo_label[i][~inside[i]] == 255).all()
        assert not labels.positive[i].any()  # nothing to find: every local view is negative
        assert set(labels.token_label[i].unique().tolist()) <= {0, 255}
        assert (labels.token_label[i] == 0).any()
    # The positive image keeps foreground, and its labels do not depend on its neighbours being negative.
    alone = net.make_labels(x[1:2], cls_label[1:2], box[1:2], 13000, key_mask=labels.key_mask[1:2].clone())
    torch.testing.assert_close(alone.pseudo_label[0], labels.pseudo_label[1])
    torch.testing.assert_close(alone.token_label[0], labels.token_label[1])
    torch.testing.assert_close(alone.positive[0], labels.positive[1])


@pytest.mark.parametrize("batch", [1, 3])
def test_refine_cams_with_background_no_class(batch):
    torch.manual_seed(0)
    images, cams = torch.rand(batch, 3, 32, 32), torch.rand(batch, NUM_CLASSES, 4, 4)
    label = refine_cams_with_background(PAR(num_iter=2), images, cams, torch.zeros(batch, NUM_CLASSES))
    assert label.shape == (batch, 32, 32) and label.dtype == torch.long
    assert (label == 0).all()
    box = torch.tensor([[4, 20, 0, 32]] * batch)
    label = refine_cams_with_background(
        PAR(num_iter=2), images, cams, torch.zeros(batch, NUM_CLASSES), img_box=box
    )
    assert (label[:, 4:20] == 0).all() and (label[:, :4] == 255).all() and (label[:, 20:] == 255).all()


def test_refine_mixed_batch_equals_images_alone():
    torch.manual_seed(0)
    images, cams = torch.rand(3, 3, 32, 32), torch.rand(3, NUM_CLASSES, 4, 4)
    cls_label = MIXED_3
    together = refine_cams_with_background(PAR(num_iter=2), images, cams, cls_label)
    for i in range(3):
        alone = refine_cams_with_background(
            PAR(num_iter=2), images[i : i + 1], cams[i : i + 1], cls_label[i : i + 1]
        )
        torch.testing.assert_close(together[i : i + 1], alone)
    assert (together[[0, 2]] == 0).all()


def test_cam_to_label_and_positive_views_no_class():
    cam = torch.rand(2, NUM_CLASSES, 6, 6)
    cls_label = torch.zeros(2, NUM_CLASSES)
    assert (cam_to_label(cam, cls_label, bkg_thre=0.3) == 0).all()
    assert (cam_to_label(cam, cls_label, low_thre=0.25, high_thre=0.7) == 0).all()
    key_mask = torch.zeros(2, 3, 36, dtype=torch.bool)
    assert not positive_views(cam, cls_label, key_mask).any()


def _negative_root(tmp_path):
    root = make_synthetic_voc(tmp_path / "voc", num_train=2, num_val=2, size=SIZE, seed=0)
    palette = Image.open(root / "SegmentationClassAug" / "train_000000.png").getpalette()
    for image_id in ("train_000000", "val_000000"):
        mask = Image.fromarray(np.zeros((SIZE, SIZE), dtype=np.uint8), mode="P")
        mask.putpalette(palette)
        mask.save(root / "SegmentationClassAug" / f"{image_id}.png")
    return root


def test_datasets_and_evaluation_with_negative_images(tmp_path):
    root = _negative_root(tmp_path)
    train = VOCTrainViews(root, "train", crop_size=SIZE, seed=0)
    sample = train[0]
    assert sample["cls_label"].shape == (NUM_CLASSES,) and (sample["cls_label"] == 0).all()
    assert train[1]["cls_label"].sum() > 0
    val = VOCSegmentation(root, "val")
    assert (val[0]["cls_label"] == 0).all()
    net = small_net()
    scores = evaluate(net, val, pseudo_labels=True, bkg_thre=0.5)
    for name in ("cam", "pseudo", "pseudo_train", "seg"):
        assert np.isfinite(scores[name].miou), name
    # a batch of the negative training sample alone through the whole step
    x, v1, v2 = (sample[k][None] for k in ("x", "v1", "v2"))
    losses = net.training_losses(x, v1, v2, sample["cls_label"][None], sample["img_box"][None], 13000)
    assert all(torch.isfinite(t) for t in losses)
    losses.total.backward()


@pytest.mark.cuda
def test_negative_batch_and_box_checks_on_cuda():
    net = small_net().cuda()
    x, v1, v2, cls_label, box = (t.cuda() for t in inputs(MIXED_3, with_box=True))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = net.training_losses(x, v1, v2, torch.zeros_like(cls_label), box, 13000)
    assert all(torch.isfinite(t) for t in losses)
    losses.total.backward()
    bad = box.clone()
    bad[1] = torch.tensor([0, 0, SIZE, SIZE])  # an (x0, y0, x1, y1) box
    with pytest.raises(ValueError, match=r"img_box row 1"):
        net.training_losses(x, v1, v2, cls_label, bad, 0)
