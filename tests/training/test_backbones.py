"""Backbone presets of build_vit: real timm names, built small with random init, run through MCCNet."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from mcc.attention import patch_vit
from mcc.network import MCCNet
from mcc.training import build_vit
from mcc.training.vit import BACKBONE_PRESETS

SMALL = dict(depth=3, embed_dim=64, num_heads=2)  # aux_layer -3 = block 0
EXPECTED = {"deit-b16-in1k", "vit-b16-in21k", "clip-b16", "dinov2-reg-b14", "eva02-b14", "dinov3-b16"}


def _small_size(model: nn.Module) -> tuple[int, int]:
    patch = model.patch_embed.patch_size
    return 4 * patch[0], 6 * patch[1]


def test_the_literature_presets_exist_with_real_timm_weights():
    assert set(BACKBONE_PRESETS) >= EXPECTED
    for preset in BACKBONE_PRESETS.values():
        assert timm.is_model(preset.timm_name), preset.timm_name
        assert preset.timm_name in timm.list_models(preset.timm_name.split(".")[0], pretrained=True)
        assert preset.crop_size % int(preset.timm_name.split("patch")[1][:2]) == 0, preset.name


@pytest.mark.parametrize("name", sorted(BACKBONE_PRESETS))
def test_preset_builds_and_runs_mcc_net(name):
    preset = BACKBONE_PRESETS[name]
    probe = build_vit(name, pretrained=False, **SMALL)  # the preset's own crop size
    assert probe.patch_embed.img_size == (preset.crop_size, preset.crop_size)
    assert probe.num_classes == 0
    torch.manual_seed(0)
    size = _small_size(probe)
    vit = build_vit(name, pretrained=False, img_size=size, **SMALL)
    assert getattr(vit, "dynamic_img_size", False) == preset.options.get(
        "dynamic_img_size", name == "dinov3-b16"
    )
    net = MCCNet(vit, num_classes=3).eval()
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = net(images)
        # Another (multi-scale) size works too: the position embedding / rope follow the grid.
        other = net(torch.randn(1, 3, 2 * size[0], 2 * size[1]))
        masked = net.encoder(images, torch.rand(1, 2, 24) < 0.5).cls  # 4 x 6 tokens
    grid = (4, 6)
    assert logits.shape == (1, 4, *grid)
    assert other.shape == (1, 4, 2 * grid[0], 2 * grid[1])
    assert masked.shape == (1, 2, 64)
    assert torch.isfinite(logits).all() and torch.isfinite(other).all()


def test_clip_preset_has_pre_norm_and_clip_statistics():
    vit = build_vit("clip-b16", pretrained=False, img_size=64, **SMALL)
    assert isinstance(vit.norm_pre, nn.LayerNorm)
    assert tuple(vit.pretrained_cfg["mean"]) == pytest.approx((0.4815, 0.4578, 0.4082), abs=1e-3)


def test_eva02_preset_normalises_every_token():
    vit = build_vit("eva02-b14", pretrained=False, img_size=56, **SMALL)
    assert not isinstance(vit.norm, nn.Identity)
    assert isinstance(vit.fc_norm, nn.Identity)
    tokens = patch_vit(vit, aux_layer=-1)(torch.randn(1, 3, 56, 84)).patches
    # A LayerNorm with unit weight and zero bias: every token has zero mean over channels.
    torch.testing.assert_close(tokens.mean(dim=1), torch.zeros(1, 4, 6), rtol=0, atol=1e-5)


def test_preset_weights_from_a_local_file(tmp_path):
    source = build_vit("dinov3-b16", pretrained=False, img_size=64, **SMALL)
    path = tmp_path / "dinov3.pth"
    torch.save(source.state_dict(), path)
    loaded = build_vit("dinov3-b16", pretrained_file=path, img_size=64, **SMALL)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_timm_names_still_work_and_kwargs_override_the_preset():
    vit = build_vit("deit_tiny_patch16_224", img_size=64, depth=1)
    assert len(vit.blocks) == 1 and vit.patch_embed.img_size == (64, 64)
    fixed = build_vit("clip-b16", img_size=64, dynamic_img_size=False, **SMALL)
    assert not fixed.dynamic_img_size


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match="name.*not a timm model or a backbone preset.*deit-b16-in1k"):
        build_vit("deit-b16-in22k")
    with pytest.raises(ValueError, match="img_size 64 is not a multiple of the model's patch size"):
        build_vit("dinov2-reg-b14", img_size=64, **SMALL)


def test_offline_without_weights_says_what_to_do_in_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConnectionError) as error:
        build_vit("test_vit", pretrained=True, img_size=160)
    message = str(error.value)
    assert "\n" not in message
    assert "pretrained_file" in message and "pretrained=False" in message
    assert "--pretrained-file" in message and "--pretrained false" in message


@pytest.mark.parametrize("name", ["eva02-b14", "dinov3-b16"])
def test_rope_preset_training_step_fast_equals_plain(name):
    from mcc.network import MCCConfig

    torch.manual_seed(0)
    config = MCCConfig.released(
        projector_dim=32, projector_hidden_dim=64, projector_bottleneck_dim=16, decoder_dim=32, num_views=4
    )
    probe = build_vit(name, pretrained=False, img_size=64 if "16" in name else 56, **SMALL)
    size = 8 * probe.patch_embed.patch_size[0]
    vit = build_vit(name, pretrained=False, img_size=size, **SMALL).double()
    fast_net = MCCNet(vit, num_classes=3, config=config).double()
    plain_net = copy.deepcopy(fast_net)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    v1 = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    inputs = (x, v1, x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64))
    cls_label = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    key_mask = fast_net.mask_sampler(2, (8, 8), 4, generator=torch.Generator().manual_seed(5))
    fast = fast_net.training_losses(*inputs, cls_label, None, 2500, key_mask=key_mask)
    plain = plain_net.training_losses(*inputs, cls_label, None, 2500, key_mask=key_mask, fast=False)
    torch.testing.assert_close(fast.total, plain.total, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(fast.total)
    fast.total.backward()
    plain.total.backward()
    for (key, a), b in zip(fast_net.named_parameters(), plain_net.parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-10, msg=key)


@pytest.mark.slow  # full-size ViT-B encoders at 448: several seconds each
@pytest.mark.parametrize("name", sorted(BACKBONE_PRESETS))
def test_full_size_preset_at_its_crop(name):
    """The real configuration (depth 12, width 768, 448 crop; random weights) wraps exactly."""
    vit = build_vit(name, pretrained=False).eval()
    encoder = patch_vit(vit)
    images = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    grid = encoder.grid_size(images)
    key_mask = torch.rand(1, 3, grid[0] * grid[1], generator=torch.Generator().manual_seed(1)) < 0.75
    with torch.no_grad():
        tokens = encoder(images)
        fast = encoder(images, key_mask).cls
        plain = encoder(images, key_mask, drop_tokens=False).cls
    torch.testing.assert_close(tokens.cls, vit.forward_features(images)[:, 0], rtol=0, atol=0)
    assert tokens.patches.shape == (1, 768, *grid) and grid == (448 // vit.patch_embed.patch_size[0],) * 2
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
