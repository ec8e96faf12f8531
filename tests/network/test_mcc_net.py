"""MCCNet: the fast training step equals the published (plain) computation; config, groups, inference."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mcc.network import MCCConfig, MCCNet, MCCTrainingStep

SMALL = dict(
    projector_dim=32,
    projector_hidden_dim=64,
    projector_bottleneck_dim=16,
    decoder_dim=32,
    num_views=6,
    mask_ratio=0.5,
    mask_scale=2,
)
NUM_CLASSES = 5


def small_net(config: MCCConfig | None = None, size: int = 128, dtype=torch.float32) -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=size, patch_size=16, embed_dim=64, depth=3, num_heads=4)
    return MCCNet(vit, NUM_CLASSES, config or MCCConfig.released(**SMALL)).to(dtype)


def batch(dtype=torch.float32, size: int = 128, global_size: int = 128):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, size, size, generator=g, dtype=dtype)
    v1 = torch.randn(2, 3, global_size, global_size, generator=g, dtype=dtype)
    v2 = x + 0.2 * torch.randn(x.shape, generator=g, dtype=dtype)
    cls_label = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], dtype=dtype)
    img_box = torch.tensor([[0, size, 0, size], [8, size - 8, 0, size - 30]])
    return x, v1, v2, cls_label, img_box


def mixed_key_mask(net: MCCNet, grid=(8, 8)) -> torch.Tensor:
    mask = net.mask_sampler(2, grid, net.config.num_views, generator=torch.Generator().manual_seed(5))
    mask[:, 0] = False  # a view that keeps everything
    mask[:, 1] = True  # a view that drops every patch key: always negative
    return mask


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("step", [0, 2500, 13000], ids=["early", "seg", "final-cam"])
@pytest.mark.parametrize("preset", ["released", "paper"])
def test_fast_step_equals_plain_step(dtype, step, preset):
    config = getattr(MCCConfig, preset)(**SMALL)
    fast_net = small_net(config, dtype=dtype)
    plain_net = copy.deepcopy(fast_net)
    inputs = batch(dtype)
    key_mask = mixed_key_mask(fast_net)

    fast = fast_net.training_losses(*inputs, step, key_mask=key_mask)
    plain = plain_net.training_losses(*inputs, step, key_mask=key_mask, fast=False)
    assert 0 < float(fast.positive_rate) < 1, "the test needs both positive and negative views"
    loss_tol, grad_tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-12, 1e-10)
    for name, a, b in zip(fast._fields, fast, plain):
        assert torch.isfinite(a), name
        assert _relative(a.detach(), b.detach()) < loss_tol, name

    fast.total.backward()
    plain.total.backward()
    checked = 0
    for (name, p), (_, q) in zip(fast_net.named_parameters(), plain_net.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert _relative(p.grad, q.grad) < grad_tol, name
            checked += 1
    assert checked == sum(1 for p in fast_net.parameters() if p.requires_grad)
    # The teacher moved identically (one EMA update in each).
    for p, q in zip(fast_net.projector.teacher.parameters(), plain_net.projector.teacher.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_fast_step_with_a_smaller_global_view():
    fast_net = small_net()
    plain_net = copy.deepcopy(fast_net)
    inputs = batch(global_size=96)
    key_mask = mixed_key_mask(fast_net)
    fast = fast_net.training_losses(*inputs, 0, key_mask=key_mask)
    plain = plain_net.training_losses(*inputs, 0, key_mask=key_mask, fast=False)
    assert _relative(fast.total.detach(), plain.total.detach()) < 1e-5


def test_total_is_the_weighted_sum_and_seg_starts_late():
    net = small_net()
    cfg = net.config
    for step in (cfg.seg_start_step - 1, cfg.seg_start_step):
        losses = net.training_losses(*batch(), step, generator=torch.Generator().manual_seed(0))
        expected = (
            cfg.w_cls * losses.cls
            + cfg.w_cls_aux * losses.cls_aux
            + cfg.w_affinity * losses.affinity
            + cfg.w_mcc * losses.mcc
            + cfg.seg_weight(step) * losses.seg
            + cfg.reg_weight(step) * losses.reg
        )
        torch.testing.assert_close(losses.total, expected)
        # the regularised loss is not computed before it counts, and is a negative energy after
        assert (float(losses.reg.detach()) == 0.0) == (step < cfg.seg_start_step)
        assert float(losses.reg.detach()) <= 0.0
    assert cfg.seg_weight(cfg.seg_start_step - 1) == 0.0 and cfg.seg_weight(cfg.seg_start_step) == 0.1
    assert cfg.reg_weight(cfg.seg_start_step - 1) == 0.0 and cfg.reg_weight(cfg.seg_start_step) == 0.05


@pytest.mark.parametrize(("preset", "step"), [("paper", 2500), ("released", 0)])
def test_reg_term_is_not_computed_while_its_weight_is_zero(monkeypatch, preset, step):
    from mcc.losses import energy

    def no_filter(*args):
        raise AssertionError("the bilateral filter ran")

    monkeypatch.setattr(energy, "_filter", no_filter)
    net = small_net(getattr(MCCConfig, preset)(**SMALL))
    losses = net.training_losses(*batch(), step, generator=torch.Generator().manual_seed(0))
    assert float(losses.reg) == 0.0 and not losses.reg.requires_grad
    losses.total.backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_fast_step_equals_plain_step_when_the_reg_term_dominates(dtype):
    # segmentation off and the energy weighted up, so that the decoder's gradient is the reg term's
    config = MCCConfig.released(w_seg=0.0, reg_energy_weight=1e-2, **SMALL)
    fast_net = small_net(config, dtype=dtype)
    plain_net = copy.deepcopy(fast_net)
    inputs = batch(dtype)
    key_mask = mixed_key_mask(fast_net)
    fast = fast_net.training_losses(*inputs, 2500, key_mask=key_mask)
    plain = plain_net.training_losses(*inputs, 2500, key_mask=key_mask, fast=False)
    assert float(fast.reg.detach()) < 0
    loss_tol, grad_tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-12, 1e-10)
    assert _relative(fast.reg.detach(), plain.reg.detach()) < loss_tol
    fast_net.zero_grad()
    (config.w_reg * fast.reg).backward()
    plain_net.zero_grad()
    (config.w_reg * plain.reg).backward()
    for (name, p), (_, q) in zip(fast_net.decoder.named_parameters(), plain_net.decoder.named_parameters()):
        assert p.grad.abs().max() > 0, name
        assert _relative(p.grad, q.grad) < grad_tol, name


def test_training_reduces_the_loss_on_a_fixed_batch():
    net = small_net()
    optimizer = torch.optim.AdamW(net.param_groups(), lr=1e-3)
    inputs = batch()
    totals = []
    for _ in range(6):
        losses = net.training_losses(*inputs, 0, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        totals.append(float(losses.total.detach()))
    assert totals[-1] < totals[0]


def test_training_step_module_is_the_training_losses():
    net = small_net()
    step_module = MCCTrainingStep(copy.deepcopy(net))
    key_mask = mixed_key_mask(net)
    a = net.training_losses(*batch(), 100, key_mask=key_mask)
    b = step_module(*batch(), 100, key_mask=key_mask)
    torch.testing.assert_close(a.total, b.total)


def test_param_groups_cover_every_trainable_parameter_once():
    net = small_net()
    groups = net.param_groups(weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert set(ids) == trainable
    assert id(net.encoder.vit.pos_embed) not in trainable  # frozen, as published
    assert not any(p.requires_grad for p in net.projector.teacher.parameters())
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert all(g["weight_decay"] == 0.05 for g in groups)
    encoder = {id(p) for p in net.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} <= encoder
    assert not ({id(p) for p in groups[1]["params"]} & encoder)


def test_pos_embed_trainable_when_asked():
    net = small_net(MCCConfig.released(freeze_pos_embed=False, **SMALL))
    assert net.encoder.vit.pos_embed.requires_grad


def test_presets_follow_their_sources():
    released, paper = MCCConfig.released(), MCCConfig.paper()
    assert (released.mask_ratio, released.infonce_variant, released.final_cam_positives_from) == (
        0.95,
        "reference",
        12001,
    )
    assert (paper.mask_ratio, paper.infonce_variant, paper.positive_cam) == (0.75, "paper", "aux")
    assert paper.final_cam_positives_from is None and paper.w_seg == 1.0 and not paper.affinity_absolute
    coco = MCCConfig.released("coco")
    assert coco.seg_start_step == 8001 and coco.final_cam_positives_from is None
    # the published loop: seg/reg off while n_iter <= 2000 (COCO 8000), final-CAM positives once > 12000
    assert not released.positives_from_final_cam(12000) and released.positives_from_final_cam(12001)
    assert released.seg_weight(2000) == 0.0 and released.seg_weight(2001) == 0.1
    assert released.reg_weight(2000) == 0.0 and released.reg_weight(2001) == 0.05
    assert coco.seg_weight(8000) == 0.0 and coco.reg_weight(8001) == 0.05
    assert paper.w_reg == 0.0 and paper.reg_weight(10**6) == 0.0
    # where the paper is silent, paper() keeps the published details
    for value in (released, paper, coco, MCCConfig.paper("coco")):
        assert (value.par_image, value.decoder_bias, value.decoder_init) == ("uint8", False, "default")
        assert (value.reg_energy_weight, value.reg_sigma_rgb, value.reg_sigma_xy) == (1e-7, 15.0, 100.0)
        assert value.reg_scale_factor == 0.5
    assert paper.seg_start_step == 2001 and MCCConfig.paper("coco").seg_start_step == 8001
    assert not paper.positives_from_final_cam(10**6)
    for value in (released, paper):
        assert (value.low_thre, value.high_thre, value.mu, value.temperature, value.momentum) == (
            0.25,
            0.7,
            0.2,
            0.5,
            0.9,
        )
        assert (value.w_affinity, value.w_mcc, value.num_views, value.mask_scale) == (0.2, 0.5, 8, 4)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"low_thre": 0.8}, "low_thre"),
        ({"positive_cam": "x"}, "positive_cam"),
        ({"infonce_variant": "x"}, "infonce_variant"),
        ({"momentum": 2.0}, "momentum"),
        ({"par_image": "png"}, "par_image"),
        ({"decoder_init": "xavier"}, "decoder_init"),
        ({"reg_sigma_xy": 0.0}, "reg_sigma_xy"),
    ],
)
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        MCCConfig.released(**overrides)


def test_inference_shapes():
    net = small_net().eval()
    images = torch.randn(2, 3, 128, 96)
    assert net(images).shape == (2, NUM_CLASSES + 1, 8, 6)
    logits = net.segment(images, scales=(1.0, 1.25, 0.5), flip=True)
    assert logits.shape == (2, NUM_CLASSES + 1, 128, 96)
    single = net.segment(images)
    torch.testing.assert_close(
        single,
        torch.nn.functional.interpolate(net(images), size=(128, 96), mode="bilinear", align_corners=False),
    )
    cam, cam_aux = net.multi_scale_cams(images)
    assert cam.shape == cam_aux.shape == (2, NUM_CLASSES, 128, 96)
    assert float(cam.min()) >= 0 and float(cam.max()) <= 1


class TestErrors:
    net = small_net()

    def test_cls_label_width(self):
        x, v1, v2, _, box = batch()
        with pytest.raises(ValueError, match="cls_label"):
            self.net.training_losses(x, v1, v2, torch.ones(2, 4), box, 0)

    def test_v2_not_aligned(self):
        x, v1, _, labels, box = batch()
        with pytest.raises(ValueError, match="v2"):
            self.net.training_losses(x, v1, x[:, :, :96], labels, box, 0)

    def test_box_shape(self):
        x, v1, v2, labels, _ = batch()
        with pytest.raises(ValueError, match="img_box"):
            self.net.training_losses(x, v1, v2, labels, torch.zeros(2, 3, dtype=torch.long), 0)

    def test_num_classes(self):
        with pytest.raises(ValueError, match="num_classes"):
            MCCNet(VisionTransformer(img_size=64, depth=1, embed_dim=32, num_heads=2), 0)


def test_precomputed_labels_give_the_same_losses():
    net = small_net()
    inputs = batch()
    key_mask = mixed_key_mask(net)
    labels = net.make_labels(inputs[0], inputs[3], inputs[4], 2500, key_mask=key_mask)
    assert labels.pseudo_label.shape == (2, 128, 128) and labels.token_label.shape == (2, 8, 8)
    assert labels.positive.shape == (2, net.config.num_views) and not labels.positive[:, 1].any()
    a = net.training_losses(*inputs, 2500, key_mask=key_mask)
    b = net.training_losses(*inputs, 2500, labels=labels)
    torch.testing.assert_close(a.total, b.total)
    with pytest.raises(ValueError, match="labels.cam"):
        net.training_losses(*inputs, 0, labels=labels._replace(cam=labels.cam[:, :3]))
    with pytest.raises(ValueError, match="labels.key_mask"):
        net.training_losses(*inputs, 0, labels=labels._replace(positive=labels.positive[:, :2]))


def test_outside_the_box_is_never_supervised():
    net = small_net()
    x, v1, v2, cls_label, _ = batch()
    img_box = torch.tensor([[0, 64, 0, 128], [0, 128, 40, 128]])
    labels = net.make_labels(x, cls_label, img_box, 0, key_mask=mixed_key_mask(net))
    assert (labels.pseudo_label[0, 64:] == 255).all() and (labels.pseudo_label[1, :, :40] == 255).all()
    # Token units: rows 4.. of image 0 lie outside; image 1's columns 0..2 hold pixels outside (40/16 = 2.5).
    assert (labels.token_label[0, 4:] == 255).all() and (labels.token_label[1, :, :3] == 255).all()


def test_decoder_follows_the_config():
    from torch import nn

    from mcc.network import LargeFOV

    net = small_net()
    assert all(conv.bias is None for conv in (net.decoder.conv6, net.decoder.conv7, net.decoder.classifier))
    # the published head: PyTorch's default init, drawn in the order conv6, conv7, classifier
    torch.manual_seed(7)
    head = LargeFOV(64, 6, 32, 5, bias=False, init="default")
    torch.manual_seed(7)
    plain = [
        nn.Conv2d(64, 32, 3, bias=False),
        nn.Conv2d(32, 32, 3, bias=False),
        nn.Conv2d(32, 6, 1, bias=False),
    ]
    for conv, expected in zip((head.conv6, head.conv7, head.classifier), plain):
        torch.testing.assert_close(conv.weight, expected.weight, rtol=0, atol=0)
    # LargeFOV's own defaults stay what they were: biases at 0, Kaiming-normal fan-out weights
    kaiming = LargeFOV(64, 6, 512, 5)
    assert all(float(c.bias.abs().max()) == 0 for c in (kaiming.conv6, kaiming.conv7, kaiming.classifier))
    assert float(kaiming.conv7.weight.std()) == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    with_bias = small_net(MCCConfig.released(decoder_bias=True, decoder_init="kaiming", **SMALL))
    assert with_bias.decoder.conv6.bias is not None and float(with_bias.decoder.conv6.bias.abs().max()) == 0
    with pytest.raises(ValueError, match="init"):
        LargeFOV(64, 6, init="xavier")


def test_par_image_is_the_8bit_crop():
    net = small_net()
    x = batch()[0]
    rgb = net._par_image(x)
    expected = ((x * net.pixel_std + net.pixel_mean) * 255).trunc().clamp(0, 255) / 255
    assert float((rgb * 255 - (rgb * 255).round()).abs().max()) < 1e-4  # whole 8-bit levels
    assert float((rgb - expected).abs().max()) <= 1 / 255 + 1e-6
    float_net = small_net(MCCConfig.released(par_image="float", **SMALL))
    torch.testing.assert_close(float_net._par_image(x), float_net.denormalize(x))
    # a pixel exactly on a level stays on it; one just below drops one level (truncation, not rounding)
    level = (torch.tensor([100.0, 100.0, 100.0]) / 255 - net.pixel_mean.view(3)) / net.pixel_std.view(3)
    image = level.view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    image[..., 1, 1] -= 1e-3
    levels = (net._par_image(image) * 255).round()
    assert (
        levels[0, :, 0, 0].tolist() in ([100.0] * 3, [99.0] * 3) and levels[0, :, 1, 1].tolist() == [99.0] * 3
    )


def test_check_crop_size_names_the_crop_and_valid_sides():
    net = MCCNet(VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2), 3)
    net.check_crop_size(448)
    net.check_crop_size((320, 480))
    with pytest.raises(ValueError, match=r"crop size: factor 0.5 gives 56x56 .* 32, 64, 96, 128"):
        net.check_crop_size(112)
    with pytest.raises(ValueError, match="crop size"):
        net.check_crop_size(100)
