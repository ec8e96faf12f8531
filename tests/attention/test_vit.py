"""KeyMaskedViT: token dropping == plain masked path == explicit -inf softmax; no-mask path == timm."""

from __future__ import annotations

import pytest
import torch
from attention_helpers import build, explicit_masked_cls, mixed_ratio_mask, relative_error

import mcc.attention.vit as vit_module
from mcc.attention import KeyMaskedViT, ScaledBernoulliKeyMask, patch_vit

MODELS = ["test_vit", "deit_tiny", "registers", "distilled"]
SIZES = [(224, 224), (448, 448), (320, 480)]


def _grads(output: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    grads = torch.autograd.grad((output * weights).sum(), inputs, allow_unused=True)
    # The classifier head is unused by the encoder: its gradient is None (= zero) in every computation.
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


# deit_tiny at 448 in float64 is covered in float32 and by the slow test below; the padded core (the
# accelerators') is checked on the non-square size.
CASES = [
    pytest.param(name, size, dtype, core, id=f"{dtype_id}-{name}-{size[0]}x{size[1]}-{core}")
    for dtype, dtype_id in ((torch.float64, "f64"), (torch.float32, "f32"))
    for name in MODELS
    for size in SIZES
    for core in ("by_rows", "padded")
    if not (name == "deit_tiny" and size == (448, 448) and dtype == torch.float64)
    and (core == "by_rows" or size == (320, 480))
]


@pytest.mark.parametrize(("name", "size", "dtype", "core"), CASES)
def test_token_dropping_equals_plain_and_explicit(monkeypatch, name, size, dtype, core):
    # the attention core view by view (the CPU's) or on the padded layout (an accelerator's), both here
    monkeypatch.setattr(vit_module, "_attention_by_rows", lambda device: core == "by_rows")
    model = build(name, size).to(dtype)
    vit = patch_vit(model)
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(2, 3, *size, dtype=dtype, generator=generator, requires_grad=True)
    grid = vit.grid_size(images)
    key_mask = mixed_ratio_mask(2, grid, generator)
    params = [images] + [p for p in model.parameters() if p.requires_grad]

    fast = vit(images, key_mask).cls
    plain = vit(images, key_mask, drop_tokens=False).cls
    explicit = explicit_masked_cls(model, images, key_mask)
    assert fast.shape == (2, 4, model.embed_dim)

    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert relative_error(fast, explicit) < tol
    assert relative_error(plain, explicit) < tol
    g_fast, g_plain, g_explicit = _grads(fast, params), _grads(plain, params), _grads(explicit, params)
    for a, b, c in zip(g_fast, g_plain, g_explicit):
        assert relative_error(a, c) < tol
        assert relative_error(b, c) < tol


@pytest.mark.slow
def test_token_dropping_deit_tiny_448_float64():
    model = build("deit_tiny", 448).double()
    vit = patch_vit(model)
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(1, 3, 448, 448, dtype=torch.float64, generator=generator, requires_grad=True)
    key_mask = mixed_ratio_mask(1, (28, 28), generator)
    params = [images] + list(model.parameters())
    fast = vit(images, key_mask).cls
    explicit = explicit_masked_cls(model, images, key_mask)
    assert relative_error(fast, explicit) < 1e-10
    for a, b in zip(_grads(fast, params), _grads(explicit, params)):
        assert relative_error(a, b) < 1e-10


def test_all_patches_dropped_class_token_sees_only_prefix():
    model = build("registers", 64).double()
    vit = patch_vit(model)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    everything = torch.ones(2, 1, 16, dtype=torch.bool)
    cls = vit(images, everything).cls
    # With every patch key dropped, the prefix tokens evolve alone: the patch content cannot matter.
    other = vit(torch.randn_like(images), everything).cls
    torch.testing.assert_close(cls, other, rtol=0, atol=1e-12)
    # And the result equals a forward over the prefix tokens only (no patches in the sequence at all).
    x = torch.cat([model.cls_token, model.reg_token], dim=1)
    for block in model.blocks:
        x = block(x)
    torch.testing.assert_close(cls[0, 0], model.norm(x)[0, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", MODELS + ["registers_embed_class"])
def test_no_mask_equals_timm(name):
    model = build(name, 224)
    vit = patch_vit(model, aux_layer=-2)
    images = torch.randn(2, 3, 224, 224)
    tokens = vit(images)
    reference = model.forward_features(images)
    prefix = model.num_prefix_tokens
    assert tokens.grid == (14, 14)
    torch.testing.assert_close(tokens.cls, reference[:, 0], rtol=0, atol=0)
    patches = tokens.patches.flatten(2).transpose(1, 2)
    torch.testing.assert_close(patches, reference[:, prefix:], rtol=0, atol=0)
    aux_index = len(model.blocks) - 2
    (aux,) = model.forward_intermediates(
        images, indices=[aux_index], norm=False, output_fmt="NCHW", intermediates_only=True
    )
    torch.testing.assert_close(tokens.aux, aux, rtol=0, atol=0)


def test_default_aux_layer_is_tenth_of_twelve():
    vit = patch_vit(build("deit_tiny", 224))
    assert vit.aux_index == 9


@pytest.mark.parametrize("size", [(448, 448), (320, 480), (96, 160)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_fixed_size_model_runs_any_multiple_like_timm_dynamic(size):
    fixed = build("deit_tiny", 224)
    dynamic = build("deit_tiny", 224, dynamic_img_size=True)
    dynamic.load_state_dict(fixed.state_dict())
    images = torch.randn(1, 3, *size)
    # timm's dynamic models resample with antialias=True; the library's default (False) is MCC's.
    tokens = patch_vit(fixed, antialias_pos_embed=True)(images)
    reference = dynamic.forward_features(images)
    torch.testing.assert_close(tokens.cls, reference[:, 0], rtol=1e-5, atol=1e-5)
    patches = tokens.patches.flatten(2).transpose(1, 2)
    torch.testing.assert_close(patches, reference[:, 1:], rtol=1e-5, atol=1e-5)
    assert tokens.patches.shape == (1, 192, size[0] // 16, size[1] // 16)


def test_no_embed_class_model_at_other_size_matches_timm_dynamic():
    fixed = build("registers", 64)
    dynamic = build("registers", 64, dynamic_img_size=True)
    dynamic.load_state_dict(fixed.state_dict())
    images = torch.randn(2, 3, 96, 128)
    tokens = patch_vit(fixed, antialias_pos_embed=True)(images)
    torch.testing.assert_close(tokens.cls, dynamic.forward_features(images)[:, 0], rtol=1e-5, atol=1e-5)


def test_two_dim_mask_gives_one_view_per_image():
    vit = patch_vit(build("test_vit", 160))
    images = torch.randn(3, 3, 160, 160)
    mask = ScaledBernoulliKeyMask(0.5, 2)(3, (10, 10), 1)
    single = vit(images, mask[:, 0]).cls
    assert single.shape == (3, 64)
    torch.testing.assert_close(single, vit(images, mask).cls[:, 0])


def test_wrapper_shares_parameters_and_state_dict_keys():
    model = build("deit_tiny", 224)
    vit = patch_vit(model)
    assert isinstance(vit, KeyMaskedViT)
    assert set(vit.state_dict()) == {f"vit.{key}" for key in model.state_dict()}
    assert sum(p.numel() for p in vit.parameters()) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(2.0)
    assert vit._attentions[0].qkv.weight is model.blocks[0].attn.qkv.weight


def test_dropout_follows_train_and_eval():
    model = build("test_vit", 160, attn_drop_rate=0.5)
    vit = patch_vit(model)
    images = torch.randn(1, 3, 160, 160)
    vit.eval()
    torch.testing.assert_close(vit(images).cls, vit(images).cls)
    vit.train()
    assert not torch.allclose(vit(images).cls, vit(images).cls)


def test_autocast_bfloat16_close_to_float32():
    vit = patch_vit(build("test_vit", 160))
    images = torch.randn(2, 3, 160, 160)
    mask = ScaledBernoulliKeyMask(0.75, 4)(2, (10, 10), 4, generator=torch.Generator().manual_seed(0))
    reference = vit(images, mask).cls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = vit(images, mask).cls
        plain = vit(images, mask, drop_tokens=False).cls
    assert torch.isfinite(fast).all()
    assert relative_error(fast.float(), reference) < 0.1
    assert relative_error(plain.float(), reference) < 0.1


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_dropping_equals_plain(dtype):
    vit = patch_vit(build("deit_tiny", 448)).cuda()
    images = torch.randn(2, 3, 448, 448, device="cuda")
    mask = ScaledBernoulliKeyMask(0.75, 4)(2, (28, 28), 8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        fast = vit(images, mask).cls.float()
        plain = vit(images, mask, drop_tokens=False).cls.float()
    assert relative_error(fast, plain) < 0.05


class TestErrors:
    def setup_method(self):
        self.vit = patch_vit(build("test_vit", 160))
        self.images = torch.randn(2, 3, 160, 160)

    def test_wrong_mask_shape(self):
        with pytest.raises(ValueError, match="key_mask"):
            self.vit(self.images, torch.zeros(2, 8, 99, dtype=torch.bool))
        with pytest.raises(ValueError, match="key_mask"):
            self.vit(self.images, torch.zeros(3, 8, 100, dtype=torch.bool))

    def test_non_bool_mask(self):
        with pytest.raises(ValueError, match="key_mask.*bool"):
            self.vit(self.images, torch.zeros(2, 8, 100))

    def test_size_not_multiple_of_patch(self):
        with pytest.raises(ValueError, match="images.*multiple of the patch size"):
            self.vit(torch.randn(2, 3, 160, 150))

    def test_wrong_image_rank(self):
        with pytest.raises(ValueError, match="images"):
            self.vit(torch.randn(3, 160, 160))

    def test_aux_layer_out_of_range(self):
        with pytest.raises(ValueError, match="aux_layer"):
            patch_vit(build("test_vit", 160), aux_layer=6)

    def test_not_a_vit(self):
        with pytest.raises(TypeError, match="VisionTransformer"):
            patch_vit(torch.nn.Linear(3, 3))

    def test_no_class_token(self):
        import timm

        model = timm.create_model("test_vit", pretrained=False, class_token=False, global_pool="avg")
        with pytest.raises(ValueError, match="class token"):
            patch_vit(model)


def test_stochastic_depth_is_drawn_per_view_on_both_paths():
    model = build("test_vit", 160, drop_path_rate=0.5).train()
    vit = patch_vit(model)
    images = torch.randn(2, 3, 160, 160)
    key_mask = ScaledBernoulliKeyMask(0.5, 2)(2, (10, 10), 3, generator=torch.Generator().manual_seed(0))
    # The same random stream gives the same per-view decisions on the token-dropping and plain paths.
    torch.manual_seed(11)
    fast = vit(images, key_mask).cls
    torch.manual_seed(11)
    plain = vit(images, key_mask, drop_tokens=False).cls
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    torch.manual_seed(12)
    assert not torch.allclose(vit(images, key_mask).cls, fast)
