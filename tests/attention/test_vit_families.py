"""patch_vit on every ViT family WSSS uses: timm's VisionTransformer variants and Eva (EVA-02, DINOv3, RoPE).

For each tiny model: no mask == timm's forward_features exactly; token dropping == plain masked path ==
timm's own blocks with an explicit -inf softmax (class tokens and gradients, float64).
"""

from __future__ import annotations

import pytest
import timm
import torch
from attention_helpers import mixed_ratio_mask, relative_error
from family_helpers import FAMILIES, TINY, build_family, patch_of, timm_masked_cls
from timm.layers import Attention

import mcc.attention.vit as vit_module
from mcc.attention import KeyMaskedAttention, patch_vit

DYNAMIC = {"dinov3", "dinov3_qkvb_swiglu", "deit_dynamic", "eva02_dynamic"}


def _sizes(name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(size the model is built at, non-square size the images have)."""
    patch = patch_of(name)
    images = (4 * patch, 6 * patch)
    # Dynamic models are built at another size, so that their own resampling is exercised.
    return ((3 * patch, 3 * patch) if name in DYNAMIC else images), images


def _grads(output, inputs, seed=1):
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    grads = torch.autograd.grad((output * weights).sum(), inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_no_mask_equals_timm_forward_features(name):
    built, size = _sizes(name)
    model = build_family(name, built)
    vit = patch_vit(model, aux_layer=-2)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    tokens = vit(images)
    reference = model.forward_features(images)
    prefix = model.num_prefix_tokens
    assert tokens.grid == (4, 6)
    torch.testing.assert_close(tokens.cls, reference[:, 0], rtol=0, atol=0)
    patches = tokens.patches.flatten(2).transpose(1, 2)
    torch.testing.assert_close(patches, reference[:, prefix:], rtol=0, atol=0)
    (aux,) = model.forward_intermediates(
        images, indices=[len(model.blocks) - 2], norm=False, output_fmt="NCHW", intermediates_only=True
    )
    torch.testing.assert_close(tokens.aux, aux, rtol=0, atol=0)


@pytest.mark.parametrize("core", ["by_rows", "padded"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_token_dropping_equals_plain_and_explicit_float64(monkeypatch, name, core):
    # the attention core view by view (the CPU's) or on the padded layout (an accelerator's), both here
    monkeypatch.setattr(vit_module, "_attention_by_rows", lambda device: core == "by_rows")
    built, size = _sizes(name)
    model = build_family(name, built).double()
    vit = patch_vit(model, aux_layer=-1)
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(2, 3, *size, dtype=torch.float64, generator=generator, requires_grad=True)
    key_mask = mixed_ratio_mask(2, vit.grid_size(images), generator)
    params = [images] + [p for p in model.parameters() if p.requires_grad]

    fast = vit(images, key_mask).cls
    plain = vit(images, key_mask, drop_tokens=False).cls
    explicit = timm_masked_cls(model, images, key_mask)
    assert fast.shape == (2, 4, model.embed_dim)
    assert relative_error(fast, explicit) < 1e-10
    assert relative_error(plain, explicit) < 1e-10
    # The masks matter: view 0 drops nothing (= unmasked), view 3 drops every patch (differs).
    unmasked = vit(images).cls
    assert relative_error(fast[:, 0], unmasked) < 1e-10
    assert relative_error(fast[:, 3], unmasked) > 1e-3
    for a, b, c in zip(_grads(fast, params), _grads(plain, params), _grads(explicit, params)):
        assert relative_error(a, c) < 1e-10
        assert relative_error(b, c) < 1e-10


@pytest.mark.parametrize("full", [0, 1, 2])
@pytest.mark.parametrize("aux_layer", [-1, -2])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_class_token_alone_in_the_last_block_equals_the_full_forward(name, aux_layer, full):
    # The fast step's global pass [x; v1]: patch tokens of the first `full` images, class tokens of all;
    # the others' last block computes their class token alone.
    built, size = _sizes(name)
    model = build_family(name, built).double()
    vit = patch_vit(model, aux_layer=aux_layer)
    images = torch.randn(3, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = [p for p in model.parameters() if p.requires_grad]
    reference = vit(images)
    partly = vit._forward_partly_class_only(images, full)
    assert relative_error(partly.cls, reference.cls) < 1e-12
    outputs, expected = [partly.cls], [reference.cls]
    if full:
        assert relative_error(partly.patches, reference.patches[:full]) < 1e-12
        assert relative_error(partly.aux, reference.aux[:full]) < 1e-12
        outputs += [partly.patches, partly.aux]
        expected += [reference.patches[:full], reference.aux[:full]]
    else:
        assert partly.patches is None and partly.aux is None
    seeds = range(len(outputs))
    loss = sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(s), dtype=o.dtype)).sum()
               for s, o in zip(seeds, outputs))  # fmt: skip
    reference_loss = sum(
        (o * torch.randn(o.shape, generator=torch.Generator().manual_seed(s), dtype=o.dtype)).sum()
        for s, o in zip(seeds, expected)
    )
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    reference_grads = torch.autograd.grad(reference_loss, params, allow_unused=True)
    for param, a, b in zip(params, grads, reference_grads):
        a, b = (torch.zeros_like(param) if g is None else g for g in (a, b))
        assert relative_error(a, b) < 1e-10


@pytest.mark.parametrize("name", ["eva02", "dinov3", "rope_mixed"])
def test_token_dropping_float32(name):
    built, size = _sizes(name)
    model = build_family(name, built)
    vit = patch_vit(model, aux_layer=-1)
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, *size, generator=generator)
    key_mask = mixed_ratio_mask(2, vit.grid_size(images), generator)
    explicit = timm_masked_cls(model, images, key_mask)
    assert relative_error(vit(images, key_mask).cls, explicit) < 1e-5
    assert relative_error(vit(images, key_mask, drop_tokens=False).cls, explicit) < 1e-5


def test_dynamic_model_default_arguments_match_timm():
    """A dynamic_img_size model with patch_vit's defaults equals timm's forward_features at other sizes."""
    model = build_family("deit_dynamic", (64, 64))
    images = torch.randn(1, 3, 96, 160)
    tokens = patch_vit(model, aux_layer=-1)(images)
    reference = model.forward_features(images)
    torch.testing.assert_close(tokens.cls, reference[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(tokens.patches.flatten(2).transpose(1, 2), reference[:, 1:], rtol=0, atol=0)


def test_fixed_size_model_keeps_the_published_resampling():
    """antialias_pos_embed=False (the default) still governs fixed-size models (the released preset)."""
    fixed = build_family("deit_dynamic", (64, 64), dynamic_img_size=False)
    images = torch.randn(1, 3, 96, 160)
    published = patch_vit(fixed, aux_layer=-1)(images).cls
    antialiased = patch_vit(fixed, aux_layer=-1, antialias_pos_embed=True)(images).cls
    assert relative_error(published, antialiased) > 1e-4


def test_fixed_size_rope_model_at_another_size_equals_timm_resized():
    """A fixed-size EVA-02 run at another size equals timm's model after set_input_size (rope rebuilt)."""
    fixed = build_family("eva02", (56, 56))
    resized = build_family("eva02", (56, 56))
    resized.load_state_dict(fixed.state_dict())
    resized.set_input_size(img_size=(84, 112))
    images = torch.randn(2, 3, 84, 112)
    tokens = patch_vit(fixed, aux_layer=-1, antialias_pos_embed=True)(images)
    reference = resized.forward_features(images)
    torch.testing.assert_close(tokens.cls, reference[:, 0], rtol=1e-5, atol=1e-5)
    patches = tokens.patches.flatten(2).transpose(1, 2)
    torch.testing.assert_close(patches, reference[:, 1:], rtol=1e-5, atol=1e-5)


def test_eva_state_dict_keys_are_timms_under_vit():
    model = build_family("eva02", (56, 84))
    vit = patch_vit(model, aux_layer=-1)
    assert set(vit.state_dict()) == {f"vit.{key}" for key in model.state_dict()}
    assert vit._attentions[0].q_proj is model.blocks[0].attn.q_proj


def test_buffers_follow_dtype_changes_after_wrapping():
    """EvaAttention's zero key bias is a buffer: the wrapper reads it after .double() too."""
    model = build_family("dinov3_qkvb_swiglu", (64, 64))
    vit = patch_vit(model, aux_layer=-1).double()
    images = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    torch.testing.assert_close(vit(images).cls, model.forward_features(images)[:, 0], rtol=0, atol=0)


def test_gated_attention_matches_timm():
    attn = Attention(32, num_heads=4, qkv_bias=True, gated=True).eval()
    ours = KeyMaskedAttention.from_timm(attn)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ours(x), attn(x), rtol=1e-6, atol=1e-6)


class TestRefusals:
    def test_no_class_token(self):
        model = timm.create_model("vit_base_patch16_rope_reg1_gap_256", pretrained=False, **TINY)
        with pytest.raises(ValueError, match="class token"):
            patch_vit(model, aux_layer=-1)

    def test_eva_patch_dropout_refused_and_off_by_default(self):
        model = build_family("eva02", (56, 56), patch_drop_rate=0.5)
        with pytest.raises(ValueError, match="patch dropout"):
            patch_vit(model, aux_layer=-1)
        assert build_family("eva02", (56, 56)).patch_drop is None
        patch_vit(build_family("eva02", (56, 56)), aux_layer=-1)  # accepted

    def test_parallel_blocks(self):
        model = timm.create_model("vit_small_patch16_18x2_224", pretrained=False, **TINY)
        with pytest.raises(TypeError, match="parallel"):
            patch_vit(model, aux_layer=-1)

    def test_rope_shape_checked(self):
        attn = KeyMaskedAttention(32, num_heads=4)
        with pytest.raises(ValueError, match="rope"):
            attn(torch.randn(1, 5, 32), rope=torch.randn(3, 16))


@pytest.mark.parametrize("name", ["eva02", "dinov3_qkvb_swiglu"])
def test_autocast_bfloat16_close_to_float32(name):
    built, size = _sizes(name)
    vit = patch_vit(build_family(name, built), aux_layer=-1)
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, *size, generator=generator)
    key_mask = mixed_ratio_mask(2, vit.grid_size(images), generator)
    reference = vit(images, key_mask).cls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = vit(images, key_mask).cls.float()
        plain = vit(images, key_mask, drop_tokens=False).cls.float()
    assert torch.isfinite(fast).all()
    assert relative_error(fast, reference) < 0.1
    assert relative_error(plain, reference) < 0.1


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["eva02", "dinov3", "rope_mixed", "clip_b16"])
def test_cuda_dropping_equals_plain_and_timm(name):
    built, size = _sizes(name)
    model = build_family(name, built).cuda()
    vit = patch_vit(model, aux_layer=-1)
    generator = torch.Generator().manual_seed(9)
    images = torch.randn(2, 3, *size, generator=generator).cuda()
    key_mask = mixed_ratio_mask(2, vit.grid_size(images), generator).cuda()
    explicit = timm_masked_cls(model, images, key_mask)
    assert relative_error(vit(images, key_mask).cls, explicit) < 1e-4
    assert relative_error(vit(images, key_mask, drop_tokens=False).cls, explicit) < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast = vit(images, key_mask).cls.float()
        plain = vit(images, key_mask, drop_tokens=False).cls.float()
    assert relative_error(fast, plain) < 0.05
