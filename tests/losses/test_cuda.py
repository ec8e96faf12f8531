"""The losses on CUDA, in float32 and under fp16/bf16 autocast, against the CPU float32 values."""

import pytest
import torch

from mcc.losses import (
    MomentumProjector,
    affinity_labels,
    affinity_loss,
    mcc_infonce,
    positive_views,
    segmentation_loss,
)

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_losses_on_cuda_match_cpu(dtype):
    teacher = torch.nn.functional.normalize(torch.randn(2, 2, 16), dim=-1)
    student = torch.nn.functional.normalize(torch.randn(2, 6, 16), dim=-1)
    positive = torch.rand(2, 6) < 0.5
    tokens, label = torch.randn(2, 8, 4, 5), torch.randint(0, 3, (2, 4, 5))
    logits, seg_label = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    cam, cls_label, key_mask = torch.rand(2, 3, 4, 5), torch.ones(2, 3), torch.rand(2, 5, 20) < 0.5
    cases = [
        (mcc_infonce, (teacher, student, positive)),
        (lambda *a: mcc_infonce(*a, variant="paper"), (teacher, student, positive)),
        (affinity_loss, (tokens, affinity_labels(label))),
        (segmentation_loss, (logits, seg_label)),
    ]
    tol = 1e-5 if dtype is None else 2e-2
    for fn, args in cases:
        ref = fn(*args)
        with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            out = fn(*(a.cuda() for a in args))
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(ref.item(), rel=tol, abs=tol)
    out = positive_views(cam.cuda(), cls_label.cuda(), key_mask.cuda())
    assert torch.equal(out.cpu(), positive_views(cam, cls_label, key_mask))


def test_projector_on_cuda():
    proj = MomentumProjector(16, out_dim=8, hidden_dim=32, bottleneck_dim=4)
    x = torch.randn(3, 16)
    ref = proj(x)
    proj = proj.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = proj(x.cuda())
        q = proj.forward_teacher(x.cuda())
    out.float().sum().backward()
    proj.update_teacher()
    torch.testing.assert_close(out.float().cpu(), ref.detach(), atol=3e-2, rtol=0)
    assert not q.requires_grad and all(p.grad is None for p in proj.teacher.parameters())
