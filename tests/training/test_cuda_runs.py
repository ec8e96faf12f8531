"""What a GPU user runs, on the first CUDA device (``make gpu-check``; skipped without CUDA)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from training_helpers import datasets, parameters, settings, tiny_net, write_root

from mcc.refine import DenseCRF
from mcc.training import evaluate, evaluate_to_dir, make_pseudo_labels, train

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=3)


def run(root, work_dir, **overrides):
    net = tiny_net()
    train_set, val_set = datasets(root)
    result = train(
        net, train_set, settings(work_dir, **overrides), val_set=val_set, device="cuda", log=lambda m: None
    )
    return net, result


def test_train_with_amp_workers_accumulation_and_a_resume(root, tmp_path):
    common = dict(max_iters=4, batch_size=4, accumulation_steps=2, num_workers=2, amp=True, eval_at_end=True)
    straight, whole = run(root, tmp_path / "straight", **common)
    assert whole.step == 4 and all(torch.isfinite(torch.tensor(h["total"])) for h in whole.history)
    assert whole.evaluations and set(whole.evaluations[-1][1]) == {"cam", "seg"}
    _, first = run(root, tmp_path / "resumed", stop_after=2, **common)
    resumed, second = run(root, tmp_path / "resumed", resume="auto", **common)
    assert second.step == 4 and len(first.history) + len(second.history) == 4
    # the same steps: close (CUDA kernels need not be bitwise deterministic)
    for name, value in parameters(resumed).items():
        torch.testing.assert_close(value, parameters(straight)[name], rtol=1e-2, atol=1e-3, msg=name)


@pytest.mark.parametrize("amp", [False, True])
def test_a_step_with_real_labels_past_the_segmentation_start_fast_equals_plain(root, amp):
    train_set, _ = datasets(root)
    batch = {
        k: torch.stack([train_set[i][k] for i in range(2)]) for k in ("x", "v1", "v2", "cls_label", "img_box")
    }
    assert batch["cls_label"].sum() > 0
    grads = []
    for fast in (True, False):
        net = tiny_net().cuda()
        net.config = dataclasses.replace(net.config, seg_start_step=0)
        generator = torch.Generator().manual_seed(0)
        inputs = [batch[k].cuda() for k in ("x", "v1", "v2")] + [batch["cls_label"], batch["img_box"]]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            losses = net.training_losses(*inputs, 1, generator=generator, fast=fast)
        assert losses.seg > 0 and losses.reg != 0
        losses.total.backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    tolerance = dict(rtol=5e-2, atol=5e-3) if amp else dict(rtol=1e-3, atol=1e-5)
    for name, grad in grads[0].items():
        if name.endswith("attn.qkv.bias"):
            continue  # the key bias's gradient is rounding noise (softmax ignores it)
        torch.testing.assert_close(grad, grads[1][name], **tolerance, msg=name)


def test_evaluation_and_pseudo_labels_with_the_crf_on_the_device(root, tmp_path):
    net = tiny_net().cuda()
    _, val_set = datasets(root)
    crf = DenseCRF(10, 1, 1, 121, 5, 4, backend="torch", device="cuda")
    on_gpu = evaluate(net, val_set, device="cuda", crf=crf, pseudo_labels=True, autocast_dtype=torch.bfloat16)
    cpu_crf = DenseCRF(10, 1, 1, 121, 5, 4, backend="torch", device="cpu")
    on_cpu = evaluate(net.cpu(), val_set, device="cpu", crf=cpu_crf, pseudo_labels=True)
    assert on_gpu["seg"].miou == pytest.approx(on_cpu["seg"].miou, abs=0.05)
    net.cuda()
    record = evaluate_to_dir(net, val_set, tmp_path / "eval", device="cuda", crf=crf)
    assert record["num_images"] == len(val_set)
    labels = make_pseudo_labels(net, val_set, tmp_path / "pseudo", device="cuda", crf=crf)
    assert labels["written"] == len(val_set)


def test_dense_crf_inference_under_autocast_gives_its_float32_result():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 40, 48), dtype=torch.uint8, device="cuda")
    probs = torch.rand(2, 4, 40, 48, device="cuda").softmax(1)
    crf = DenseCRF(5, 1, 1, 30, 5, 4, backend="torch", device="cuda")
    plain = crf.inference(images, probs)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = crf.inference(images, probs)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
