"""The loop's mixed-precision step: forward under autocast, backward outside it, losses in float32.

CPU bf16 autocast stands in for CUDA's (the loop uses autocast on CUDA only; the test opens it on the
CPU through the loop's own dtype choice).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from training_helpers import datasets, settings, tiny_net, write_root

import mcc.training.loop as loop
from mcc.training import train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=4)


def seg_from_start(seed: int = 0):
    net = tiny_net(seed)
    net.config = dataclasses.replace(net.config, seg_start_step=0)  # every loss counts at step 0
    return net


def documented_step(micro, step, key_mask, backward_inside: bool):
    """The step as the autocast documentation writes it (or, for the control, with the backward inside)."""
    net = seg_from_start()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = (micro["x"], micro["v1"], micro["v2"], micro["cls_label"], micro["img_box"])
        losses = net.training_losses(*views, step, key_mask=key_mask)
        if backward_inside:
            losses.total.backward()
    if not backward_inside:
        losses.total.backward()
    return net, losses


def test_amp_gradients_equal_the_documented_step(root, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_amp_dtype", lambda amp, device: torch.bfloat16 if amp else None)
    seen = {}
    micro_step = loop._micro_step

    def capture(step_module, micro, step, key_mask, **kwargs):
        seen.update(micro={k: v.clone() for k, v in micro.items()}, step=step, key_mask=key_mask.clone())
        losses = micro_step(step_module, micro, step, key_mask, **kwargs)
        seen["losses"] = losses
        return losses

    monkeypatch.setattr(loop, "_micro_step", capture)
    net = seg_from_start()
    train_set, _ = datasets(root)
    run = settings(tmp_path, max_iters=1, warmup_iters=0, amp=True)
    train(net, train_set, run, device="cpu", log=lambda m: None)
    assert all(t.dtype == torch.float32 for t in seen["losses"])  # every loss term in float32

    reference, losses = documented_step(seen["micro"], seen["step"], seen["key_mask"], backward_inside=False)
    assert torch.equal(losses.total.detach(), seen["losses"].total.detach())
    ours = dict(net.named_parameters())
    compared = 0
    for name, param in reference.named_parameters():
        if param.grad is not None:
            assert torch.equal(ours[name].grad, param.grad), name
            compared += 1
    assert compared > 10

    # the control: a backward inside the autocast block gives other gradients (the test can tell)
    inside, _ = documented_step(seen["micro"], seen["step"], seen["key_mask"], backward_inside=True)
    assert any(
        not torch.equal(ours[name].grad, param.grad)
        for name, param in inside.named_parameters()
        if param.grad is not None
    )
