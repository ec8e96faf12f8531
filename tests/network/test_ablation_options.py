"""MCCConfig options for ablations: seg_target="cam" (no PAR) and the w_mcc warm-up; defaults unchanged."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mcc import cam_to_label
from mcc.network import MCCConfig, MCCNet


def tiny_net(**overrides) -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    config = MCCConfig.released(
        "voc", projector_dim=16, projector_hidden_dim=16, projector_bottleneck_dim=8, decoder_dim=16,
        mask_scale=1, seg_start_step=0, **overrides,
    )  # fmt: skip
    return MCCNet(vit, 3, config)


def test_presets_keep_the_published_behaviour():
    for config in (MCCConfig.released(), MCCConfig.paper(), MCCConfig.released("coco")):
        assert config.seg_target == "par" and config.mcc_warmup_steps == 0
        assert config.mcc_weight(0) == config.w_mcc
    with pytest.raises(ValueError, match="seg_target"):
        MCCConfig(seg_target="crf")
    with pytest.raises(ValueError, match="mcc_warmup_steps"):
        MCCConfig(mcc_warmup_steps=-1)


def test_mcc_weight_ramps_linearly_then_stays():
    config = MCCConfig(w_mcc=0.5, mcc_warmup_steps=4)
    assert [config.mcc_weight(s) for s in range(6)] == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])


def test_seg_target_cam_is_the_thresholded_cam_and_par_differs():
    x = torch.randn(2, 3, 32, 32)
    cls_label = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    box = torch.tensor([[0, 32, 0, 24], [4, 32, 0, 32]])
    mask = torch.rand(2, 8, 16) < 0.5
    net_cam = tiny_net(seg_target="cam")
    labels = net_cam.make_labels(x, cls_label, box, 0, key_mask=mask)
    expected = cam_to_label(labels.cam, cls_label, low_thre=0.25, high_thre=0.7, img_box=box)
    assert torch.equal(labels.pseudo_label, expected)
    net_par = tiny_net()
    par = net_par.make_labels(x, cls_label, box, 0, key_mask=mask)
    assert torch.equal(par.cam, labels.cam) and torch.equal(par.token_label, labels.token_label)
    assert not torch.equal(par.pseudo_label, labels.pseudo_label)


def test_warmup_scales_only_the_contrast_term():
    x, v1, v2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    cls_label = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    mask = torch.rand(2, 8, 16) < 0.5
    plain, ramped = tiny_net(), tiny_net(mcc_warmup_steps=10)
    a = plain.training_losses(x, v1, v2, cls_label, None, 1, key_mask=mask)
    b = ramped.training_losses(x, v1, v2, cls_label, None, 1, key_mask=mask)
    assert torch.allclose(a.mcc, b.mcc) and torch.allclose(a.cls, b.cls)
    rest = a.total - 0.5 * a.mcc
    assert torch.allclose(b.total, rest + 0.5 * 2 / 10 * b.mcc, atol=1e-5)
