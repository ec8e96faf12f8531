"""KeyMaskedAttention: explicit -inf softmax, timm compatibility, autocast, errors."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import Attention

from mcc.attention import KeyMaskedAttention


def explicit(attn: KeyMaskedAttention, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    batch, tokens, dim = x.shape
    q, k, v = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = q @ k.transpose(-2, -1) / (dim // attn.num_heads) ** 0.5
    scores = scores.masked_fill(key_mask[:, None, None, :], float("-inf"))
    return attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_explicit_softmax_with_inf_columns(qk_norm, dtype):
    attn = KeyMaskedAttention(32, num_heads=4, qkv_bias=True, qk_norm=qk_norm).to(dtype)
    x = torch.randn(3, 9, 32, dtype=dtype, requires_grad=True)
    key_mask = torch.rand(3, 9) < 0.6
    key_mask[:, 0] = False
    out, ref = attn(x, key_mask), explicit(attn, x, key_mask)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g_out, g_ref, rtol=tol * 10, atol=tol * 10)


def test_dropped_key_is_invisible_but_its_row_is_computed():
    attn = KeyMaskedAttention(16, num_heads=2)
    x = torch.randn(1, 5, 16)
    key_mask = torch.tensor([[False, False, True, False, True]])
    out = attn(x, key_mask)
    changed = x.clone()
    changed[:, [2, 4]] = torch.randn(1, 2, 16)
    out_changed = attn(changed, key_mask)
    kept = ~key_mask[0]
    torch.testing.assert_close(out[:, kept], out_changed[:, kept])
    assert not torch.allclose(out[:, ~kept], out_changed[:, ~kept])


def test_no_mask_equals_timm_attention_and_state_dict_loads():
    timm_attn = Attention(48, num_heads=6, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm).eval()
    ours = KeyMaskedAttention(48, num_heads=6, qkv_bias=True, qk_norm=True)
    assert set(ours.state_dict()) == set(timm_attn.state_dict())
    ours.load_state_dict(timm_attn.state_dict())
    x = torch.randn(2, 7, 48)
    torch.testing.assert_close(ours(x), timm_attn(x), rtol=1e-6, atol=1e-6)


def test_from_timm_shares_parameters():
    timm_attn = Attention(32, num_heads=4, qkv_bias=True)
    shared = KeyMaskedAttention.from_timm(timm_attn)
    assert shared.qkv.weight is timm_attn.qkv.weight and shared.proj.bias is timm_attn.proj.bias
    with torch.no_grad():
        timm_attn.proj.weight.zero_()
        timm_attn.proj.bias.fill_(1.0)
    assert torch.equal(shared(torch.randn(1, 3, 32)), torch.ones(1, 3, 32))


def test_from_timm_rejects_other_modules():
    with pytest.raises(TypeError, match="Attention"):
        KeyMaskedAttention.from_timm(torch.nn.Linear(4, 4))


def test_autocast_bfloat16_finite_and_close():
    attn = KeyMaskedAttention(32, num_heads=4)
    x = torch.randn(2, 12, 32)
    key_mask = torch.rand(2, 12) < 0.75
    key_mask[:, 0] = False
    reference = attn(x, key_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, key_mask)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


class TestErrors:
    attn = KeyMaskedAttention(16, num_heads=2)
    x = torch.randn(2, 5, 16)

    def test_every_key_dropped(self):
        key_mask = torch.zeros(2, 5, dtype=torch.bool)
        key_mask[1] = True
        with pytest.raises(ValueError, match="every key"):
            self.attn(self.x, key_mask)

    def test_non_bool(self):
        with pytest.raises(ValueError, match="key_mask.*bool"):
            self.attn(self.x, torch.zeros(2, 5))

    def test_wrong_shape(self):
        with pytest.raises(ValueError, match="key_mask must have shape"):
            self.attn(self.x, torch.zeros(2, 4, dtype=torch.bool))

    def test_heads_must_divide_dim(self):
        with pytest.raises(ValueError, match="num_heads"):
            KeyMaskedAttention(10, num_heads=3)


def test_norm_layer_argument_matches_timm_qk_norm():
    from functools import partial

    norm = partial(torch.nn.LayerNorm, eps=1e-6)
    timm_attn = Attention(32, num_heads=4, qk_norm=True, norm_layer=norm).eval()
    ours = KeyMaskedAttention(32, num_heads=4, qk_norm=True, norm_layer=norm)
    ours.load_state_dict(timm_attn.state_dict())
    assert ours.q_norm.eps == 1e-6
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ours(x), timm_attn(x), rtol=1e-6, atol=1e-6)
