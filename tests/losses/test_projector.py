import copy

import pytest
import torch
import torch.nn as nn

from mcc.losses import MomentumProjector


def _small(**kwargs):
    return MomentumProjector(12, out_dim=10, hidden_dim=16, bottleneck_dim=6, **kwargs)


def _magnitudes(proj):
    return [head.last_layer.parametrizations.weight.original0 for head in (proj.student, proj.teacher)]


def test_structure_and_output_shape():
    proj = _small()
    linears = [m for m in proj.student.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 16), (16, 16), (16, 6)]
    assert sum(isinstance(m, nn.GELU) for m in proj.student.mlp) == 2
    last = proj.student.last_layer
    assert last.bias is None and last.weight.shape == (10, 6)
    x = torch.randn(2, 5, 12)
    assert proj(x).shape == (2, 5, 10)
    assert proj.forward_teacher(x).shape == (2, 5, 10)


@pytest.mark.parametrize("num_layers", [1, 2, 4])
def test_num_layers(num_layers):
    proj = _small(num_layers=num_layers)
    linears = [m for m in proj.student.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers
    assert linears[0].in_features == 12 and linears[-1].out_features == 6
    assert proj(torch.randn(3, 12)).shape == (3, 10)


def test_forward_is_normalised_mlp_then_unit_rows():
    proj = _small()
    x = torch.randn(4, 12)
    z = torch.nn.functional.normalize(proj.student.mlp(x), dim=-1)
    v = proj.student.last_layer.parametrizations.weight.original1
    expected = z @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(proj(x), expected)
    # unit-norm input and rows: every output is a cosine
    assert proj(x).abs().max() <= 1 + 1e-6


def test_teacher_starts_as_copy_and_takes_no_gradient():
    proj = _small()
    for (name, s), (_, t) in zip(
        proj.student.named_parameters(), proj.teacher.named_parameters(), strict=True
    ):
        assert torch.equal(s, t), name
        assert not t.requires_grad
    x = torch.randn(3, 12, requires_grad=True)
    q = proj.forward_teacher(x)
    assert not q.requires_grad
    k = proj(x)
    (k * q).sum().backward()
    assert all(p.grad is None for p in proj.teacher.parameters())
    assert all(p.grad is not None for p in proj.student_parameters())


def test_optimiser_parameters_and_state_dict():
    proj = _small()
    trainable = list(proj.student_parameters())
    names = {id(p): n for n, p in proj.named_parameters()}
    assert all(names[id(p)].startswith("student.") for p in trainable)
    assert not any(names[id(p)].endswith("original0") for p in trainable)
    assert len(trainable) == 7  # 3 weights, 3 biases, the direction v of the last layer
    assert {n for n, p in proj.named_parameters() if p.requires_grad} == {names[id(p)] for p in trainable}
    keys = proj.state_dict().keys()
    assert "teacher.last_layer.parametrizations.weight.original1" in keys
    clone = _small()
    clone.load_state_dict(proj.state_dict())
    x = torch.randn(2, 12)
    torch.testing.assert_close(clone.forward_teacher(x), proj.forward_teacher(x))
    torch.testing.assert_close(copy.deepcopy(proj)(x), proj(x))


def test_magnitude_stays_one_after_optimiser_step():
    proj = _small()
    opt = torch.optim.AdamW(proj.student_parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        proj(torch.randn(4, 12)).pow(2).sum().backward()
        opt.step()
        proj.update_teacher()
    # even an optimiser given every parameter cannot move g: it has no gradient
    opt = torch.optim.SGD(proj.parameters(), lr=0.1)
    proj(torch.randn(4, 12)).sum().backward()
    opt.step()
    for g in _magnitudes(proj):
        assert not g.requires_grad
        assert torch.equal(g, torch.ones_like(g))
    for head in (proj.student, proj.teacher):
        torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(10))


@pytest.mark.parametrize("momentum", [0.9, 0.0, 1.0, 0.37])
def test_update_teacher_exact_ema(momentum):
    proj = _small(momentum=momentum)
    with torch.no_grad():
        for p in proj.student_parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in proj.teacher.named_parameters()}
    student = {n: p.clone() for n, p in proj.student.named_parameters()}
    proj.update_teacher()
    for name, p in proj.teacher.named_parameters():
        expected = momentum * before[name] + (1 - momentum) * student[name]
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)
        assert not p.requires_grad
    # the weight-norm direction is averaged on the underlying tensor, not on the normalised weight
    v = "last_layer.parametrizations.weight.original1"
    torch.testing.assert_close(
        dict(proj.teacher.named_parameters())[v], momentum * before[v] + (1 - momentum) * student[v]
    )


def test_update_teacher_moves_towards_student():
    proj = _small()
    with torch.no_grad():
        for p in proj.student_parameters():
            p.add_(1.0)
    x = torch.randn(3, 12)
    gap = (proj.forward_teacher(x) - proj(x).detach()).abs().sum()
    for _ in range(60):
        proj.update_teacher()
    assert (proj.forward_teacher(x) - proj(x).detach()).abs().sum() < 1e-2 * gap


def test_bf16_autocast_close_to_float32():
    proj = _small()
    x = torch.randn(2, 3, 12)
    ref = proj(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = proj(x)
        out_teacher = proj.forward_teacher(x)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=0)
    torch.testing.assert_close(out_teacher.float(), ref.detach(), atol=3e-2, rtol=0)


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_bad_momentum(momentum):
    with pytest.raises(ValueError, match="momentum"):
        _small(momentum=momentum)


@pytest.mark.parametrize("name", ["in_dim", "out_dim", "hidden_dim", "bottleneck_dim", "num_layers"])
def test_bad_sizes(name):
    kwargs = dict(in_dim=12, out_dim=10, hidden_dim=16, bottleneck_dim=6, num_layers=3)
    kwargs[name] = 0
    with pytest.raises(ValueError, match=name):
        MomentumProjector(**kwargs)
