"""A whole released training step against the published step, re-built term by term in this file.

Every term is computed here from the primitives (multi-scale CAMs, positiveness, token labels, PAR on
the 8-bit image, the losses, the regularised loss) with the published code's own constants and schedule
rules written out (de-normalisation with 58.395/123.675..., ``.to(torch.uint8)``, ``n_iter <= 2000``,
``n_iter > 12000``, the weights 1, 1, 0.2, 0.5, 0.1, 0.05) and separate encoder passes, as published.
``MCCNet.training_losses`` (fast and plain) must give the same labels, terms, total and gradients.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from mcc.cam import cam_to_label, multi_scale_cam
from mcc.losses import (
    affinity_labels,
    affinity_loss,
    dense_energy_loss,
    mcc_infonce,
    positive_views,
    segmentation_loss,
)
from mcc.network import MCCConfig, MCCNet
from mcc.refine import PAR, bilateral_filter, refine_cams_with_background

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "losses"))
from energy_reference import reference_energy  # noqa: E402

NUM_CLASSES = 5
SIZE = 64
PATCH = 16
SMALL = dict(
    projector_dim=32,
    projector_hidden_dim=64,
    projector_bottleneck_dim=16,
    decoder_dim=32,
    num_views=6,
    mask_ratio=0.5,
    mask_scale=2,
)
# the published constants (ImageNet mean / std in 0-255 units, as the published code writes them)
MEAN_255 = (123.675, 116.28, 103.53)
STD_255 = (58.395, 57.12, 57.375)


def tiny_net() -> MCCNet:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=SIZE, patch_size=PATCH, embed_dim=48, depth=3, num_heads=3)
    return MCCNet(vit, NUM_CLASSES, MCCConfig.released(**SMALL))


def make_batch():
    g = torch.Generator().manual_seed(11)
    # 8-bit images with flat regions (so that PAR has edges to follow), normalised as the loader does
    coarse = torch.randint(0, 256, (2, 3, 6, 6), generator=g).float()
    image = F.interpolate(coarse, size=(SIZE, SIZE), mode="nearest")
    image = (image + torch.randint(-3, 4, image.shape, generator=g)).clamp(0, 255)
    mean = torch.tensor(MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(STD_255).view(1, 3, 1, 1)
    x = (image - mean) / std
    v1 = x.flip(-1) + 0.1 * torch.randn(x.shape, generator=g)
    v2 = x + 0.2 * torch.randn(x.shape, generator=g)
    cls_label = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]], dtype=torch.float32)
    img_box = torch.tensor([[0, SIZE, 0, SIZE], [8, SIZE - 8, 0, SIZE - 30]])
    return x, v1, v2, cls_label, img_box


def key_mask_for(net: MCCNet) -> torch.Tensor:
    """Views that keep one token each: positiveness then depends on the CAM that judges it."""
    tokens = (SIZE // PATCH) ** 2
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, net.config.num_views, tokens, dtype=torch.bool)
    for b in range(2):
        for v in range(net.config.num_views):
            mask[b, v, torch.randperm(tokens, generator=g)[0]] = False
    return mask


def denormalize_255(x: torch.Tensor) -> torch.Tensor:
    """The published ``denormalize_img`` before its uint8 cast: channel by channel, Python constants."""
    out = torch.zeros_like(x)
    for c in range(3):
        out[:, c] = x[:, c] * STD_255[c] + MEAN_255[c]
    return out


def published_labels(net: MCCNet, x, cls_label, img_box, key_mask, n_iter: int):
    """CAMs, positiveness, token labels and the PAR pseudo label as the published step makes them."""
    grid = (x.shape[-2] // PATCH, x.shape[-1] // PATCH)
    with torch.no_grad():
        cam, cam_aux = multi_scale_cam(net.cams, x, (1.0, 0.5, 1.5))
        judge = cam if n_iter > 12000 else cam_aux
        judge = F.interpolate(judge, size=grid, mode="bicubic", align_corners=False)
        positive = positive_views(judge, cls_label, key_mask, 0.25, 0.7, 0.2)
        aux_tokens = F.interpolate(cam_aux, size=grid, mode="bilinear", align_corners=False)
        y0, y1, x0, x1 = img_box.unbind(1)
        token_box = torch.stack([-(-y0 // PATCH), y1 // PATCH, -(-x0 // PATCH), x1 // PATCH], 1)
        token_label = cam_to_label(aux_tokens, cls_label, low_thre=0.25, high_thre=0.7, img_box=token_box)
        par = PAR(dilations=(1, 2, 4, 8, 12, 24), num_iter=10)
        image_8bit = denormalize_255(x).to(torch.uint8) / 255.0  # truncation, as ``.type(torch.uint8)``
        pseudo_label = refine_cams_with_background(
            par, image_8bit, cam, cls_label, high_thre=0.7, low_thre=0.25, img_box=img_box, down_scale=2
        )
    return cam, cam_aux, positive, token_label, pseudo_label


def published_step(net: MCCNet, x, v1, v2, cls_label, img_box, key_mask, n_iter: int) -> dict:
    cam, cam_aux, positive, token_label, pseudo_label = published_labels(
        net, x, cls_label, img_box, key_mask, n_iter
    )
    main = net.encoder(x)
    cls_logits = net.classifier(F.adaptive_max_pool2d(main.patches, 1)).flatten(1)
    aux_logits = net.aux_classifier(F.adaptive_max_pool2d(main.aux, 1)).flatten(1)
    loss_cls = F.multilabel_soft_margin_loss(cls_logits, cls_label)
    loss_cls_aux = F.multilabel_soft_margin_loss(aux_logits, cls_label)

    net.projector.update_teacher()
    student_global = torch.stack([net.encoder(x).cls, net.encoder(v1).cls], dim=1)
    with torch.no_grad():
        teacher_global = torch.stack([net.encoder(x).cls, net.encoder(v1).cls], dim=1)
    local = net.encoder(v2, key_mask, drop_tokens=False).cls
    teacher = net.projector.forward_teacher(teacher_global)
    student = net.projector(torch.cat([student_global, local], dim=1))
    flags = torch.cat([torch.ones(2, 2, dtype=torch.bool), positive], dim=1)
    loss_mcc = mcc_infonce(teacher, student, flags, 0.5, 1e-4, "reference")

    loss_aff = affinity_loss(main.patches, affinity_labels(token_label), absolute=True)

    segs = F.interpolate(net.decoder(main.patches), size=x.shape[-2:], mode="bilinear", align_corners=False)
    loss_seg = segmentation_loss(segs, pseudo_label)
    # the image of the rloss: de-normalised, neither clamped nor rounded
    loss_reg = dense_energy_loss(
        denormalize_255(x), segs, pseudo_label, img_box, weight=1e-7, sigma_rgb=15.0, sigma_xy=100.0
    )
    w_seg, w_reg = (0.0, 0.0) if n_iter <= 2000 else (0.1, 0.05)
    total = loss_cls + loss_cls_aux + 0.2 * loss_aff + 0.5 * loss_mcc + w_seg * loss_seg + w_reg * loss_reg
    return dict(
        cam=cam,
        cam_aux=cam_aux,
        positive=positive,
        token_label=token_label,
        pseudo_label=pseudo_label,
        total=total,
        cls=loss_cls,
        cls_aux=loss_cls_aux,
        affinity=loss_aff,
        mcc=loss_mcc,
        seg=loss_seg,
        reg=loss_reg,
        segs=segs,
    )


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module")
def nets():
    return tiny_net(), make_batch()


@pytest.mark.parametrize("n_iter", [2000, 2001, 12000, 12001])
def test_released_step_is_the_published_step(nets, n_iter):
    base, inputs = nets
    x, v1, v2, cls_label, img_box = inputs
    key_mask = key_mask_for(base)
    hand_net, fast_net, plain_net = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)

    hand = published_step(hand_net, *inputs, key_mask, n_iter)
    labels = fast_net.make_labels(x, cls_label, img_box, n_iter, key_mask=key_mask)
    for name in ("cam", "cam_aux", "positive", "token_label", "pseudo_label"):
        torch.testing.assert_close(getattr(labels, name), hand[name], rtol=0, atol=0, msg=name)
    assert bool((hand["pseudo_label"] != 255).any()) and bool((hand["pseudo_label"] == 255).any())

    fast = fast_net.training_losses(*inputs, n_iter, key_mask=key_mask)
    plain = plain_net.training_losses(*inputs, n_iter, key_mask=key_mask, fast=False)
    active = n_iter > 2000
    for name in ("total", "cls", "cls_aux", "affinity", "mcc", "seg", "reg"):
        expected = hand[name].detach() if name != "reg" or active else torch.tensor(0.0)
        for path, losses in (("fast", fast), ("plain", plain)):
            value = getattr(losses, name).detach()
            assert abs(float(value - expected)) <= 1e-5 * abs(float(expected)) + 1e-9, (path, name)
    assert float(fast.positive_rate) == pytest.approx(float(hand["positive"].float().mean()))
    assert 0 < float(fast.positive_rate) < 1, "the batch needs positive and negative views"

    # the reg term, re-derived once more in float64 with explicit loops and resizes
    value, _ = reference_energy(
        denormalize_255(x), hand["segs"].detach(), hand["pseudo_label"], img_box, filter_fn=bilateral_filter
    )
    assert float(hand["reg"].detach()) == pytest.approx(value, rel=1e-5)

    hand["total"].backward()
    fast.total.backward()
    plain.total.backward()
    checked = 0
    for (name, p), (_, q), (_, r) in zip(
        hand_net.named_parameters(), fast_net.named_parameters(), plain_net.named_parameters()
    ):
        if not p.requires_grad:
            continue
        assert _relative(r.grad, p.grad) < 1e-5, ("plain", name)
        assert _relative(q.grad, p.grad) < 1e-4, ("fast", name)
        checked += 1
    assert checked > 10
    decoder_grad = sum(float(p.grad.abs().sum()) for p in fast_net.decoder.parameters())
    assert (decoder_grad > 0) == active  # the decoder learns only once seg and reg count


def test_schedule_boundaries(nets):
    base, (x, _, _, cls_label, img_box) = nets
    key_mask = key_mask_for(base)
    labels = {n: base.make_labels(x, cls_label, img_box, n, key_mask=key_mask) for n in (11999, 12000, 12001)}
    *_, aux_positive, _, _ = published_labels(base, x, cls_label, img_box, key_mask, 12000)
    *_, final_positive, _, _ = published_labels(base, x, cls_label, img_box, key_mask, 12001)
    assert not torch.equal(aux_positive, final_positive), "the batch must tell the two CAMs apart"
    assert torch.equal(labels[11999].positive, aux_positive)
    assert torch.equal(labels[12000].positive, aux_positive)  # published: final CAM only once n_iter > 12000
    assert torch.equal(labels[12001].positive, final_positive)

    cfg = base.config
    assert (cfg.seg_weight(2000), cfg.reg_weight(2000)) == (0.0, 0.0)
    assert (cfg.seg_weight(2001), cfg.reg_weight(2001)) == (0.1, 0.05)
    coco = MCCConfig.released("coco")
    assert (coco.seg_weight(8000), coco.reg_weight(8000), coco.seg_weight(8001)) == (0.0, 0.0, 0.1)


def test_par_sees_the_8bit_image(nets):
    base, (x, _, _, cls_label, img_box) = nets
    # the loader's 8-bit levels come back one level lower wherever float rounding lands just below them
    published = denormalize_255(x).to(torch.uint8).float() / 255.0
    torch.testing.assert_close(base._par_image(x), published, rtol=0, atol=0)
    continuous = MCCNet(
        VisionTransformer(img_size=SIZE, patch_size=PATCH, embed_dim=48, depth=3, num_heads=3),
        NUM_CLASSES,
        MCCConfig.released(par_image="float", **SMALL),
    )
    assert float((continuous._par_image(x) - published).abs().max()) > 0.5 / 255
    # on this batch the two images give different pseudo labels, and the released step uses the 8-bit one
    key_mask = key_mask_for(base)
    released = base.make_labels(x, cls_label, img_box, 2001, key_mask=key_mask).pseudo_label
    continuous.load_state_dict(base.state_dict())
    other = continuous.make_labels(x, cls_label, img_box, 2001, key_mask=key_mask).pseudo_label
    assert 0 < int((released != other).sum()) < released.numel() // 100
    *_, published_label = published_labels(base, x, cls_label, img_box, key_mask, 2001)
    assert torch.equal(released, published_label)
