"""The fast step's label pass takes the unflipped scale-1.0 CAMs from the gradient pass: the same labels.

``training_losses(fast=True)`` without precomputed labels runs the multi-scale CAMs without the pass on the
unflipped crop at full size and takes those maps from the gradient pass over ``[x; v1]`` (the same weights
on the same input). These tests compare every label with the independent computation
(``make_labels``), bit for bit in float32, and check that the shortcut is not taken where the two passes could
differ (dropout or stochastic depth active in train mode, no scale that keeps the crop's size).
"""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mcc.network import MCCConfig, MCCNet

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
SIZE = 128


def small_net(config: MCCConfig, dtype=torch.float32, **vit_options) -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=64, depth=3, num_heads=4, **vit_options)
    return MCCNet(vit, NUM_CLASSES, config).to(dtype)


def batch(dtype=torch.float32, global_size: int = SIZE):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, SIZE, SIZE, generator=g, dtype=dtype)
    v1 = torch.randn(2, 3, global_size, global_size, generator=g, dtype=dtype)
    v2 = x + 0.2 * torch.randn(x.shape, generator=g, dtype=dtype)
    cls_label = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], dtype=dtype)
    img_box = torch.tensor([[0, SIZE, 0, SIZE], [8, SIZE - 8, 0, SIZE - 30]])
    return x, v1, v2, cls_label, img_box


class Spy:
    """Records the labels the step makes and the images the encoder sees without a key mask."""

    def __init__(self, net: MCCNet, monkeypatch) -> None:
        self.labels = []
        self.unmasked_images = 0
        make = net._labels_from_cams

        def labels_from_cams(*args, **kwargs):
            self.labels.append(make(*args, **kwargs))
            return self.labels[-1]

        monkeypatch.setattr(net, "_labels_from_cams", labels_from_cams)
        net.encoder.register_forward_pre_hook(self._count, with_kwargs=True)
        # the fast step's global pass, whose last block makes v1's class token alone
        partly = net.encoder._forward_partly_class_only

        def partly_class_only(images, full):
            self.unmasked_images += images.shape[0]
            return partly(images, full)

        monkeypatch.setattr(net.encoder, "_forward_partly_class_only", partly_class_only)

    def _count(self, module, args, kwargs):
        if len(args) == 1 and kwargs.get("key_mask") is None:
            self.unmasked_images += args[0].shape[0]


def _assert_same_labels(reused, independent, cls_label, cam_atol: float = 0.0):
    """Every label bit for bit; the CAMs of the classes present in the batch within ``cam_atol`` (0: bit
    for bit), the others zero (the reused pass makes the present ones only)."""
    present = cls_label.bool().any(0)
    for name in reused._fields:
        value, expected = getattr(reused, name), getattr(independent, name)
        if name in ("cam", "cam_aux"):
            assert not value[:, ~present].any(), name
            value, expected, atol = value[:, present], expected[:, present], cam_atol
        else:
            atol = 0.0
        torch.testing.assert_close(value, expected, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize(
    ("preset", "step", "global_size", "aux_layer"),
    [
        ("released", 0, SIZE, -3),
        ("released", 2500, SIZE, -3),
        ("released", 13000, SIZE, -1),
        ("released", 13000, 96, -3),
        ("paper", 2500, SIZE, -3),
        ("paper", 13000, 96, -2),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_reused_label_pass_gives_the_independent_labels(
    monkeypatch, preset, step, global_size, aux_layer, dtype
):
    config = getattr(MCCConfig, preset)(aux_layer=aux_layer, **SMALL)
    net = small_net(config, dtype)
    independent_net = copy.deepcopy(net)
    x, v1, v2, cls_label, img_box = inputs = batch(dtype, global_size)
    if dtype == torch.float64:  # key masks drawn inside both computations: the same draws in the same order
        masks = lambda: dict(generator=torch.Generator().manual_seed(4))  # noqa: E731
    else:  # a view that keeps every key and one that drops all of them: positive and negative views
        mask = net.mask_sampler(2, (8, 8), 6, generator=torch.Generator().manual_seed(5))
        mask[:, 0], mask[:, 1] = False, True
        masks = lambda: dict(key_mask=mask.clone())  # noqa: E731
    independent = independent_net.make_labels(x, cls_label, img_box, step, **masks())
    expected = independent_net.training_losses(*inputs, step, labels=independent)

    spy = Spy(net, monkeypatch)
    losses = net.training_losses(*inputs, step, **masks())
    (reused,) = spy.labels
    # float32 matrix products here give each image the same result whatever the batch; float64 ones do
    # not always (flip(x) alone vs in [x; flip x]: 1e-15), so there the CAMs agree to rounding
    exact = dtype == torch.float32
    _assert_same_labels(reused, independent, cls_label, cam_atol=0.0 if exact else 1e-13)
    assert bool((reused.pseudo_label != 255).any()) and bool((reused.token_label != 255).any())
    assert dtype == torch.float64 or 0 < float(losses.positive_rate) < 1
    # B = 2 images fewer through the encoder than labels + gradient part separately (3 scales x 2B + 2B):
    # the label pass ran flip(x) alone at scale 1.0, then the gradient pass [x; v1] (or x and v1)
    assert spy.unmasked_images == 3 * 4 + 4 - 2
    # the same labels and the same gradient pass: the same losses, bit for bit
    for name, value, reference in zip(losses._fields, losses, expected):
        tol = 0.0 if exact else 1e-12
        torch.testing.assert_close(value.detach(), reference.detach(), rtol=tol, atol=tol, msg=name)


def test_reused_label_pass_under_cpu_autocast(monkeypatch):
    net = small_net(MCCConfig.released(**SMALL))
    independent_net = copy.deepcopy(net)
    x, v1, v2, cls_label, img_box = inputs = batch()
    key_mask = net.mask_sampler(2, (8, 8), 6, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        independent = independent_net.make_labels(x, cls_label, img_box, 13000, key_mask=key_mask)
        spy = Spy(net, monkeypatch)
        net.training_losses(*inputs, 13000, key_mask=key_mask)
    _assert_same_labels(spy.labels[0], independent, cls_label)


@pytest.mark.parametrize(
    ("vit_options", "overrides", "train", "reused"),
    [
        (dict(drop_path_rate=0.1), {}, True, False),  # stochastic depth in train mode
        (dict(drop_rate=0.1), {}, True, False),  # dropout after the position embedding / in the MLP
        (dict(attn_drop_rate=0.1), {}, True, False),  # dropout of the attention weights
        (dict(drop_path_rate=0.1, attn_drop_rate=0.1), {}, False, True),  # eval mode: nothing drawn
        (dict(drop_path_rate=0.0), {}, True, True),
        ({}, dict(cam_scales=(0.5, 1.5)), True, False),  # no scale keeps the crop's size
        ({}, dict(cam_scales=(1.5, 1.0, 1.0)), True, True),
    ],
)
def test_label_pass_reuses_the_gradient_pass_only_when_identical(
    monkeypatch, vit_options, overrides, train, reused
):
    net = small_net(MCCConfig.released(**{**SMALL, **overrides}), **vit_options).train(train)
    scales = net.config.cam_scales
    x, v1, v2, cls_label, img_box = inputs = batch()
    spy = Spy(net, monkeypatch)
    key_mask = net.mask_sampler(2, (8, 8), 6, generator=torch.Generator().manual_seed(5))
    losses = net.training_losses(*inputs, 2500, key_mask=key_mask)
    assert torch.isfinite(losses.total)
    full_size = sum(1 for s in scales if s == 1.0)
    if reused:  # flip(x) once (B images) for every scale 1.0, the other scales on [x; flip x], [x; v1]
        assert spy.unmasked_images == 2 + 4 * (len(scales) - full_size) + 4
    else:  # every scale on [x; flip x], then [x; v1]
        assert spy.unmasked_images == 4 * len(scales) + 4
    if not train:
        expected = copy.deepcopy(net).make_labels(x, cls_label, img_box, 2500, key_mask=key_mask)
        _assert_same_labels(spy.labels[0], expected, cls_label)


def test_precomputed_labels_and_the_plain_path_run_the_label_pass_alone(monkeypatch):
    net = small_net(MCCConfig.released(**SMALL))
    inputs = batch()
    key_mask = net.mask_sampler(2, (8, 8), 6, generator=torch.Generator().manual_seed(5))
    spy = Spy(net, monkeypatch)
    net.training_losses(*inputs, 2500, key_mask=key_mask, fast=False)
    assert spy.unmasked_images == 2 * 6 + 2 + 2 + 2 + 2 + 2  # 3 scales x 2B, x, x, v1, no-grad x, v1


@pytest.mark.cuda
def test_reused_label_pass_on_cuda():
    # cuBLAS may pick other kernels for the flipped half alone (B images instead of 2B): float rounding
    net = small_net(MCCConfig.released(**SMALL)).cuda()
    independent_net = copy.deepcopy(net)
    x, v1, v2, cls_label, img_box = inputs = tuple(t.cuda() for t in batch())
    key_mask = net.mask_sampler(2, (8, 8), 6, generator=torch.Generator().manual_seed(5)).cuda()
    independent = independent_net.make_labels(x, cls_label, img_box, 13000, key_mask=key_mask)
    seen = []
    make = net._labels_from_cams
    net._labels_from_cams = lambda *a, **k: seen.append(make(*a, **k)) or seen[-1]
    net.training_losses(*inputs, 13000, key_mask=key_mask)
    reused = seen[0]
    torch.testing.assert_close(reused.cam, independent.cam, rtol=0, atol=1e-5)
    torch.testing.assert_close(reused.cam_aux, independent.cam_aux, rtol=0, atol=1e-5)
    for name in ("pseudo_label", "token_label"):
        agree = (getattr(reused, name) == getattr(independent, name)).float().mean()
        assert float(agree) >= 0.999, name


@pytest.mark.parametrize("seg_target", ["par", "cam"])
@pytest.mark.parametrize("first", [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], ids=["one-negative", "all-negative"])
def test_reused_label_pass_with_negative_images(monkeypatch, seg_target, first):
    # image 1 has no foreground class: only the classes of image 0 (maybe none) are made at full size
    net = small_net(MCCConfig.released(seg_target=seg_target, **SMALL))
    independent_net = copy.deepcopy(net)
    x, v1, v2, _, img_box = batch()
    cls_label = torch.tensor([first, [0, 0, 0, 0, 0]], dtype=torch.float32)
    inputs = (x, v1, v2, cls_label, img_box)
    key_mask = net.mask_sampler(2, (8, 8), 6, generator=torch.Generator().manual_seed(5))
    independent = independent_net.make_labels(x, cls_label, img_box, 13000, key_mask=key_mask)
    spy = Spy(net, monkeypatch)
    net.training_losses(*inputs, 13000, key_mask=key_mask)
    _assert_same_labels(spy.labels[0], independent, cls_label)
    assert not spy.labels[0].positive[1].any()
