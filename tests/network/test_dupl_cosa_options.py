"""The DuPL / CoSA options of the training step: off by default, each doing what its source does."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_mcc_net import SMALL, _relative, batch, mixed_key_mask, small_net

from mcc.cam import cosine_threshold, image_threshold
from mcc.losses import consistency_loss, seg_to_cam_loss
from mcc.network import MCCConfig
from mcc.network import mcc_net as mcc_net_module
from mcc.network.config import DUPL_VOC_THRESHOLDS
from mcc.training.loop import make_ema_teacher

ALL_OPTIONS = dict(
    dynamic_thre=(0.7, 0.55, 0.6, 0.55, 0.7),
    dynamic_thre_steps=(1000, 4000),
    gmm_filter_from=2000,
    gmm_min_pixels=50,
    gmm_min_mean_gap=0.0,
    w_consistency=0.05,
    consistency_from=2001,
    consistency_conf_thre=0.0,  # a random network is not confident: supervise every ignored pixel
    ema_teacher_decay=0.9994,
    w_seg_to_cam=0.05,
)
DUPL_COSA_FIELDS = {
    "dynamic_thre",
    "dynamic_thre_start",
    "dynamic_thre_steps",
    "gmm_filter_from",
    "gmm_min_pixels",
    "gmm_min_mean_gap",
    "gmm_prob_thre",
    "w_consistency",
    "consistency_from",
    "consistency_conf_thre",
    "strong_scale",
    "ema_teacher_decay",
    "w_seg_to_cam",
    "seg_to_cam_temperature",
}


def strong_view(x):
    return (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=x.dtype)).flip(
        -1
    )


@pytest.mark.parametrize("with_teacher", [True, False], ids=["teacher", "own-labels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("step", [0, 2500, 13000], ids=["early", "options", "late"])
def test_fast_step_equals_plain_step_with_every_option(dtype, step, with_teacher):
    # without the teacher the fast step takes its labels' scale-1 CAMs from the gradient pass
    options = dict(ALL_OPTIONS)
    if not with_teacher:
        options.update(ema_teacher_decay=None, w_seg_to_cam=0.0)
    fast_net = small_net(MCCConfig.released(**SMALL, **options), dtype=dtype)
    teacher = make_ema_teacher(fast_net)
    plain_net = copy.deepcopy(fast_net)
    inputs = batch(dtype)
    strong = strong_view(inputs[0])
    key_mask = mixed_key_mask(fast_net)
    common = dict(key_mask=key_mask, strong=strong, teacher=None if teacher is None else teacher.module)
    fast = fast_net.training_losses(*inputs, step, **common)
    plain = plain_net.training_losses(*inputs, step, fast=False, **common)
    if step > 0:
        assert float(fast.consistency.detach()) > 0
        assert (float(fast.seg_to_cam.detach()) > 0) == with_teacher
    loss_tol, grad_tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-12, 1e-10)
    for name, a, b in zip(fast._fields, fast, plain):
        assert torch.isfinite(a), name
        assert _relative(a.detach(), b.detach()) < loss_tol, name
    fast.total.backward()
    plain.total.backward()
    for (name, p), (_, q) in zip(fast_net.named_parameters(), plain_net.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert _relative(p.grad, q.grad) < grad_tol, name


def test_everything_is_off_by_default_and_the_presets_are_unchanged():
    defaults = MCCConfig()
    for preset in (MCCConfig.released(), MCCConfig.paper(), MCCConfig.released("coco")):
        for name in DUPL_COSA_FIELDS:
            assert getattr(preset, name) == getattr(defaults, name), name
    assert defaults.dynamic_thre is None and defaults.gmm_filter_from is None
    assert defaults.w_consistency == 0 and defaults.ema_teacher_decay is None and defaults.w_seg_to_cam == 0


def test_defaults_follow_the_published_code():
    config = MCCConfig(dynamic_thre="dupl_voc")
    assert config.dynamic_thre == DUPL_VOC_THRESHOLDS and len(DUPL_VOC_THRESHOLDS) == 20
    # 0.70 for aeroplane, bicycle, bird, boat, chair, train (VOC ids 1, 2, 3, 4, 9, 19)
    assert [i + 1 for i, t in enumerate(DUPL_VOC_THRESHOLDS) if t == 0.7] == [1, 2, 3, 4, 9, 19]
    assert config.dynamic_start == 0.7 and config.dynamic_thre_steps == (2000, 20000)
    assert (config.gmm_min_pixels, config.gmm_min_mean_gap, config.gmm_prob_thre) == (1000, 1.0, 0.95)
    assert (config.consistency_from, config.consistency_conf_thre, config.strong_scale) == (8001, 0.9, 0.75)
    assert config.seg_to_cam_temperature == 0.01


def test_the_step_switches_scale_with_the_run():
    config = MCCConfig.released(dynamic_thre="dupl_voc", gmm_filter_from=8000).scaled_schedule(2000)
    assert config.dynamic_thre_steps == (200, 2000)
    assert config.gmm_filter_from == 800 and config.consistency_from == 800


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"dynamic_thre": (0.7, 1.5)}, "dynamic_thre"),
        ({"dynamic_thre": "voc"}, "dynamic_thre"),
        ({"dynamic_thre": (0.2, 0.7)}, "low_thre"),
        ({"dynamic_thre_steps": (100, 101)}, "dynamic_thre_steps"),
        ({"gmm_prob_thre": 2.0}, "gmm_prob_thre"),
        ({"strong_scale": 0.0}, "strong_scale"),
        ({"ema_teacher_decay": 1.0}, "ema_teacher_decay"),
        ({"w_seg_to_cam": 0.05}, "ema_teacher_decay"),
        ({"seg_to_cam_temperature": 0.0}, "seg_to_cam_temperature"),
    ],
)
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        MCCConfig.released(**overrides)


def test_per_class_thresholds_must_match_the_classes():
    with pytest.raises(ValueError, match="dynamic_thre"):
        small_net(MCCConfig.released(**SMALL, dynamic_thre=(0.6,) * 4))


@pytest.mark.parametrize("step", [500, 2500, 5000])
def test_dynamic_threshold_makes_the_token_and_segmentation_labels(step):
    config = MCCConfig.released(
        **SMALL, dynamic_thre=(0.7, 0.3, 0.6, 0.3, 0.5), dynamic_thre_steps=(1000, 4000)
    )
    net = small_net(config)
    x, _, _, cls_label, img_box = batch()
    key_mask = mixed_key_mask(net)
    labels = net.make_labels(x, cls_label, img_box, step, key_mask=key_mask)
    if step < 1000:
        expected = 0.7
    else:
        expected = image_threshold(
            cosine_threshold(step - 1000, torch.full((5,), 0.7), torch.tensor(config.dynamic_thre), 3000),
            cls_label,
        )
    assert torch.equal(torch.as_tensor(net.foreground_threshold(cls_label, step)), torch.as_tensor(expected))
    # the same labels as a network whose fixed high_thre is this image's threshold
    for b in range(2):
        high = float(torch.as_tensor(expected).reshape(-1)[b if torch.is_tensor(expected) else 0])
        fixed = small_net(dataclasses.replace(config, dynamic_thre=None, high_thre=high))
        one = fixed.make_labels(
            x[b : b + 1], cls_label[b : b + 1], img_box[b : b + 1], step, key_mask=key_mask[b : b + 1]
        )
        assert torch.equal(labels.token_label[b : b + 1], one.token_label), b
        assert torch.equal(labels.pseudo_label[b : b + 1], one.pseudo_label), b
        assert torch.equal(labels.positive[b : b + 1], net.make_labels(
            x[b : b + 1], cls_label[b : b + 1], img_box[b : b + 1], step, key_mask=key_mask[b : b + 1]
        ).positive)  # fmt: skip
    if step == 5000:  # past the end: image 0 has classes 0 and 2 (0.7, 0.6), image 1 classes 1 and 4
        assert torch.as_tensor(expected).tolist() == pytest.approx([0.7, 0.5])


def test_gmm_filter_acts_on_the_segmentation_label_from_its_step(monkeypatch):
    config = MCCConfig.released(**SMALL, gmm_filter_from=3000, gmm_min_pixels=7, gmm_prob_thre=0.9)
    net = small_net(config)
    inputs = batch()
    key_mask = mixed_key_mask(net)
    calls = []
    real = mcc_net_module.gmm_noise_filter

    def spy(pixel_loss, label, **kwargs):
        calls.append((pixel_loss, label, kwargs))
        out = real(pixel_loss, label, **kwargs)
        return out.masked_fill((label > 0) & (label < 255), 255)  # drop all foreground: visible in the loss

    monkeypatch.setattr(mcc_net_module, "gmm_noise_filter", spy)
    labels = net.make_labels(inputs[0], inputs[3], inputs[4], 2500, key_mask=key_mask)
    before = net.training_losses(*inputs, 2999, labels=labels)
    assert not calls
    after = net.training_losses(*inputs, 3000, labels=labels)
    assert len(calls) == 1
    pixel_loss, label, kwargs = calls[0]
    assert torch.equal(label, labels.pseudo_label)
    assert kwargs == dict(min_pixels=7, min_mean_gap=1.0, prob_thre=0.9, ignore_index=255)
    logits = F.interpolate(net.decoder(net.encoder(inputs[0]).patches), size=(128, 128), mode="bilinear")
    torch.testing.assert_close(pixel_loss, F.cross_entropy(logits, label, ignore_index=255, reduction="none"))
    assert float(before.seg) != float(after.seg)


def test_consistency_term_is_dupls(monkeypatch):
    config = MCCConfig.released(**SMALL, w_consistency=0.05, consistency_from=100, consistency_conf_thre=0.0)
    net = small_net(config)
    inputs = batch()
    strong = strong_view(inputs[0])
    labels = net.make_labels(inputs[0], inputs[3], inputs[4], 100, key_mask=mixed_key_mask(net))
    early = net.training_losses(*inputs, 99, labels=labels)  # no strong view needed before its step
    assert float(early.consistency) == 0
    with pytest.raises(ValueError, match="strong"):
        net.training_losses(*inputs, 100, labels=labels)
    with pytest.raises(ValueError, match="strong"):
        net.training_losses(*inputs, 100, labels=labels, strong=strong[:, :, :64])
    losses = net.training_losses(*inputs, 100, labels=labels, strong=strong)
    # by hand: the strong view at 0.75 scale (96 px), its logits flipped back and resized to the crop
    small = F.interpolate(strong, size=(96, 96), mode="bilinear", align_corners=False)
    strong_logits = F.interpolate(net(small).flip(-1), size=(128, 128), mode="bilinear", align_corners=False)
    clean = F.interpolate(net(inputs[0]), size=(128, 128), mode="bilinear", align_corners=False)
    expected = consistency_loss(strong_logits, clean, labels.pseudo_label, conf_thre=0.0)
    assert float(losses.consistency) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 0
    without = net.training_losses(*inputs, 99, labels=labels)
    assert float(losses.total - without.total) == pytest.approx(0.05 * float(expected), rel=1e-4)


def test_teacher_makes_the_labels_and_its_segmentation_supervises_the_cam():
    config = MCCConfig.released(**SMALL, ema_teacher_decay=0.9, w_seg_to_cam=0.05)
    net = small_net(config)
    teacher = make_ema_teacher(net)
    with torch.no_grad():  # a teacher that differs from the student
        for p in teacher.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inputs = batch()
    key_mask = mixed_key_mask(net)
    with pytest.raises(ValueError, match="teacher"):
        net.training_losses(*inputs, 2500, key_mask=key_mask)
    labels = net.make_labels(inputs[0], inputs[3], inputs[4], 2500, key_mask=key_mask, teacher=teacher.module)
    own = teacher.module.make_labels(inputs[0], inputs[3], inputs[4], 2500, key_mask=key_mask)
    for name in ("cam", "cam_aux", "positive", "token_label", "pseudo_label"):
        assert torch.equal(getattr(labels, name), getattr(own, name)), name
    student = net.make_labels(inputs[0], inputs[3], inputs[4], 2500, key_mask=key_mask)
    assert not torch.equal(student.cam, labels.cam)
    assert labels.teacher_seg.shape == (2, 6, 128, 128) and student.teacher_seg is None
    losses = net.training_losses(*inputs, 2500, labels=labels)
    cam = F.conv2d(net.encoder(inputs[0]).patches, net.classifier.weight)
    expected = seg_to_cam_loss(cam, labels.teacher_seg, inputs[3], temperature=0.01)
    assert float(losses.seg_to_cam) == pytest.approx(float(expected), rel=1e-5)
    assert float(net.training_losses(*inputs, 2000, labels=labels).seg_to_cam) == 0  # before seg_start_step
    with pytest.raises(ValueError, match="teacher_seg"):
        net.training_losses(*inputs, 2500, labels=student)


def test_total_is_the_weighted_sum_of_every_term():
    config = MCCConfig.released(**SMALL, **ALL_OPTIONS)
    net = small_net(config)
    teacher = make_ema_teacher(net)
    inputs = batch()
    losses = net.training_losses(
        *inputs, 13000, key_mask=mixed_key_mask(net), strong=strong_view(inputs[0]), teacher=teacher.module
    )
    total = (
        losses.cls + losses.cls_aux + 0.2 * losses.affinity + 0.5 * losses.mcc + 0.1 * losses.seg
        + 0.05 * losses.reg + 0.05 * losses.consistency + 0.05 * losses.seg_to_cam
    )  # fmt: skip
    assert float(losses.total) == pytest.approx(float(total), rel=1e-6)


def test_ema_teacher_recipe():
    net = small_net(MCCConfig.released(**SMALL, ema_teacher_decay=0.9))
    teacher = make_ema_teacher(net)
    for p, q in zip(teacher.module.parameters(), net.parameters()):
        assert torch.equal(p, q) and not p.requires_grad  # the first update copies
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    teacher.update_parameters(net)
    for old, new, student in zip(before, teacher.module.parameters(), net.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * student)
    assert make_ema_teacher(small_net()) is None
