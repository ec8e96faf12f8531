"""DDP on CPU (gloo, two processes): ranks agree, and equal one process accumulating the same batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from training_helpers import datasets, parameters, settings, tiny_net, write_root

from mcc.training import cleanup_distributed, init_distributed, train

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, root: str, work_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        net = tiny_net()
        train_set, val_set = datasets(root)
        result = train(
            net,
            train_set,
            settings(work_dir, max_iters=3, batch_size=2, eval_at_end=True, save_every=3),
            val_set=val_set,
            context=context,
            log=lambda message: None,
        )
        torch.save({"params": parameters(net), "history": result.history, "evals": result.evaluations}, out)
    finally:
        cleanup_distributed()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("synthetic"), num_train=4)


def test_two_gloo_ranks_agree_and_match_accumulation(root, tmp_path):
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    port = _free_port()
    processes = []
    ctx = mp.get_context("spawn")
    for rank in range(WORLD):
        process = ctx.Process(target=_worker, args=(rank, port, str(root), str(tmp_path / "ddp"), outs[rank]))
        process.start()
        processes.append(process)
    for process in processes:
        process.join(timeout=240)
        assert process.exitcode == 0, f"a DDP rank failed (exit code {process.exitcode})"
    rank0, rank1 = (torch.load(out, weights_only=True) for out in outs)
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
    assert rank0["evals"] == rank1["evals"] and len(rank0["evals"]) == 1
    assert (tmp_path / "ddp" / "last.pt").is_file() and (tmp_path / "ddp" / "config.json").is_file()

    # one process, the same global batch of 2 as 2 micro-batches of 1: the same computation
    single = tiny_net()
    train_set, val_set = datasets(root)
    result = train(
        single,
        train_set,
        settings(tmp_path / "single", max_iters=3, batch_size=2, accumulation_steps=2, eval_at_end=True),
        val_set=val_set,
        device="cpu",
        log=lambda message: None,
    )
    for name, value in parameters(single).items():
        expected = rank0["params"][name]
        if name.endswith("attn.qkv.bias"):
            # The key bias shifts every logit of a query equally, so softmax ignores it: its gradient is
            # rounding noise, which AdamW's normalisation blows up to steps of any size. Compare q and v.
            dim = value.numel() // 3
            keep = torch.cat([torch.arange(dim), torch.arange(2 * dim, 3 * dim)])
            expected, value = expected[keep], value[keep]
        torch.testing.assert_close(expected, value, rtol=1e-5, atol=1e-6, msg=name)
    assert result.evaluations[0][1] == pytest.approx(rank0["evals"][0][1], abs=1e-3)
