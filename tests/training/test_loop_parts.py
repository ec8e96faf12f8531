"""Small parts of the training loop: the amp dtype, the buffers DDP must sync, what moves to the device."""

from __future__ import annotations

import torch
from training_helpers import tiny_net

import mcc.training.loop as loop


def test_amp_is_bf16_on_cuda_and_fp16_on_a_gpu_without_bf16(monkeypatch):
    cuda = torch.device("cuda", 0)
    assert loop._amp_dtype(True, torch.device("cpu")) is None and loop._amp_dtype(False, cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loop._amp_dtype(True, cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # V100, T4
    assert loop._amp_dtype(True, cuda) == torch.float16


def test_only_running_statistics_need_a_buffer_sync():
    net = tiny_net()
    assert {name for name, _ in net.named_buffers()} == {"pixel_mean", "pixel_std", "_std_255", "_mean_255"}
    assert loop._changing_buffers(net) == []  # constants: DDP need not re-send them every forward
    net.decoder.add_module("norm", torch.nn.BatchNorm2d(4))
    assert loop._changing_buffers(net) == ["decoder.norm"]
    assert loop._buffer_sync(False) in ({"forward_sync_buffers": False}, {"broadcast_buffers": False})


def test_labels_and_boxes_stay_on_the_host():
    micro = {k: torch.zeros(1, 4) for k in ("x", "v1", "v2", "cls_label", "img_box")}
    moved = loop._to_device(micro, torch.device("meta"))
    assert {k for k, v in moved.items() if v.device.type == "meta"} == {"x", "v1", "v2"}
    assert moved["img_box"] is micro["img_box"] and moved["cls_label"] is micro["cls_label"]
