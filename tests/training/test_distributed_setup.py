"""init_distributed: a single process on cuda:N makes it current; device_id only where torch takes it."""

from __future__ import annotations

import torch
import torch.distributed as dist

import mcc.training.distributed as distributed
from mcc.training import init_distributed


def test_a_single_process_on_cuda_1_makes_it_the_current_device(monkeypatch):
    current = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    context = init_distributed("cuda:1")
    assert context.device == torch.device("cuda", 1) and current == [torch.device("cuda", 1)]


def test_device_id_is_passed_only_to_a_torch_that_takes_it(monkeypatch):
    assert distributed._binds_device()  # this torch (2.14) takes device_id

    def old_init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1):
        del backend, init_method, timeout, world_size, rank

    monkeypatch.setattr(dist, "init_process_group", old_init_process_group)  # torch 2.1's arguments
    assert not distributed._binds_device()
